from edgeworker.cli import main

main()

from edgeworker.entry import main

main()

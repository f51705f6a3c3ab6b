"""The `edgeworker` program's entry point: `--version` is answered before click and the command
tree are imported (they cost most of the start-up, on a small box ~10x a bare interpreter)."""

import sys


def main() -> None:
    if sys.argv[1:] in (["--version"], ["-V"]):
        from edgeworker import __version__

        print(f"edgeworker, version {__version__}")
        return
    from edgeworker.cli import main as cli_main

    cli_main()

"""The `edgeworker` program's entry point: `--version` is answered before click and the command
tree are imported (they cost most of the start-up, on a small box ~10x a bare interpreter)."""

import sys


def main() -> None:
    if sys.argv[1:] in (["--version"], ["-V"]):
        from edgeworker import __version__

        print(f"edgeworker, version {__version__}")
        return
    # peewee imports hashlib, and hashlib loads OpenSSL (3.5 MB resident, 7 ms) that edgeworker
    # does not use: its hashes come from the standard library's own modules instead.
    sys.modules.setdefault("_hashlib", None)
    from edgeworker.cli import main as cli_main

    cli_main()


def openssl_for_jobs() -> None:
    """Undo the blocks of `_hashlib` (main) and psycopg2 and psycopg (edgeworker/__init__)
    before a job's code imports: it gets the full hashlib, and the drivers that are
    installed."""
    for name in ("psycopg2", "psycopg"):
        if sys.modules.get(name, False) is None:
            del sys.modules[name]
    if "_hashlib" in sys.modules and sys.modules["_hashlib"] is None:
        del sys.modules["_hashlib"]
        for name in ("hashlib", "hmac"):
            sys.modules.pop(name, None)

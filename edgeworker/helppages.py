"""The command line's help pages, rendered when a program is built (`python -m
edgeworker.helppages FILE`, by the Makefile) and shipped beside this module, so that the built
program shows `edgeworker [COMMAND...] --help` without importing click and the command tree.
Run from source there is no such file, and click renders every page.

A page is click's output for a terminal of 80 columns or more (click's help is 78 wide there); a
narrower terminal, other arguments, or (for a command's page) $EDGEWORKER_CONFIG or
$EDGEWORKER_DB set, which click reads before it gets to the command, go to click. The file is
marshal's (no import needed to read it), written and read by the same Python in one build.
"""

import marshal
import os
import sys

PAGES = os.path.join(os.path.dirname(__file__), "help-pages")
HELP = ("-h", "--help")
WIDE = 80


def find(argv: list[str], environ, path: str = PAGES) -> str | None:
    """The page `argv` asks for, if it is one of the rendered pages as rendered."""
    if not argv or argv[-1] not in HELP or columns(environ) < WIDE:
        return None
    command = argv[:-1]
    if command and (environ.get("EDGEWORKER_CONFIG") or environ.get("EDGEWORKER_DB")):
        return None
    try:
        with open(path, "rb") as handle:
            pages = marshal.load(handle)
    except FileNotFoundError:
        return None
    return pages.get(" ".join(command))


def columns(environ) -> int:
    """The terminal's width as click sees it (`shutil.get_terminal_size`, without shutil's
    imports): $COLUMNS, else the terminal's, else 80."""
    try:
        width = int(environ["COLUMNS"])
    except (KeyError, ValueError):
        width = 0
    if width <= 0:
        try:
            width = os.get_terminal_size(sys.__stdout__.fileno()).columns or WIDE
        except (AttributeError, ValueError, OSError):
            width = WIDE
    return width


def render() -> dict[str, str]:
    """Every page, as the program prints it on a wide terminal: the program's, each group's and
    each command's, keyed by the command's words."""
    import contextlib
    import io

    from edgeworker.cli import cli

    pages = {}
    saved = {name: os.environ.pop(name, None)
             for name in ("COLUMNS", "EDGEWORKER_CONFIG", "EDGEWORKER_DB")}
    os.environ["COLUMNS"] = str(WIDE)

    def visit(command, words: list[str]) -> None:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main([*words, "--help"], prog_name="edgeworker", standalone_mode=False)
        if code != 0:
            raise RuntimeError(f"edgeworker {' '.join(words)} --help: exit code {code}")
        pages[" ".join(words)] = out.getvalue()
        for name, sub in getattr(command, "commands", {}).items():
            visit(sub, [*words, name])

    try:
        visit(cli, [])
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
    return pages


def write(path: str) -> None:
    with open(path, "wb") as handle:
        marshal.dump(render(), handle)


if __name__ == "__main__":
    write(sys.argv[1])

"""The help pages a build ships (edgeworker/helppages.py): each is what click prints for it, and
only what click would print is shown from them."""

import functools
import os
import subprocess
import sys

import pytest

from edgeworker import helppages

WIDE = {"COLUMNS": "100"}


@functools.cache
def pages_file(directory: str) -> str:
    path = os.path.join(directory, "help-pages")
    helppages.write(path)
    return path


@pytest.fixture
def pages(tmp_path_factory) -> str:
    return pages_file(str(tmp_path_factory.getbasetemp()))


def clicks(args: list[str], columns: str) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGEWORKER_")}
    result = subprocess.run([sys.executable, "-m", "edgeworker", *args], capture_output=True,
                            text=True, timeout=60, env={**environ, "COLUMNS": columns})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("args", [["--help"], ["jobs", "--help"], ["jobs", "add", "-h"],
                                  ["tasks", "prune", "--help"], ["run", "--help"]])
def test_a_page_is_what_click_prints(pages, args):
    assert helppages.find(args, WIDE, pages) == clicks(args, "100")


def test_every_command_has_its_page(pages):
    import marshal

    from edgeworker.cli import cli

    with open(pages, "rb") as handle:
        names = set(marshal.load(handle))
    expected = {""} | {name for name in cli.commands}
    expected |= {f"{group} {name}" for group, command in cli.commands.items()
                 for name in getattr(command, "commands", {})}
    assert names == expected


def test_click_shows_what_the_pages_cannot(pages):
    # A narrower terminal: click wraps the text to it.
    assert helppages.find(["--help"], {"COLUMNS": "79"}, pages) is None
    assert helppages.find(["--help"], {"COLUMNS": "80"}, pages) == clicks(["--help"], "80")
    # Other arguments, or a command that does not exist.
    assert helppages.find(["--debug", "--help"], WIDE, pages) is None
    assert helppages.find(["nothing", "--help"], WIDE, pages) is None
    assert helppages.find(["status"], WIDE, pages) is None
    assert helppages.find([], WIDE, pages) is None
    # click reads $EDGEWORKER_CONFIG and $EDGEWORKER_DB (and may refuse them) before a command.
    assert helppages.find(["jobs", "--help"], {**WIDE, "EDGEWORKER_DB": "/"}, pages) is None
    assert helppages.find(["--help"], {**WIDE, "EDGEWORKER_DB": "/"}, pages) is not None
    # Run from source there are no pages.
    assert helppages.find(["--help"], WIDE, pages + ".missing") is None


def test_the_width_is_clicks(monkeypatch):
    import shutil

    for environ in ({"COLUMNS": "120"}, {"COLUMNS": "60"}, {"COLUMNS": "x"}, {"COLUMNS": "0"},
                    {}):
        monkeypatch.delenv("COLUMNS", raising=False)
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        assert helppages.columns(environ) == shutil.get_terminal_size().columns, environ

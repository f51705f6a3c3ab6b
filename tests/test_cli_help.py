"""Every command has help text and an entry in docs/cli.md (an idea from sqlite-utils)."""

import re
from pathlib import Path

import click
import pytest

from edgeworker.cli import cli

DOCS = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()


def commands(group: click.Group, prefix: str = ""):
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            yield from commands(command, f"{path} ")
        else:
            yield path, command


ALL = sorted(commands(cli))


@pytest.mark.parametrize("path, command", ALL, ids=[p for p, _ in ALL])
def test_command_has_help_and_docs(path, command):
    assert command.help, f"{path} has no help text"
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{path} {param.opts[0]} has no help text"
    assert f"## `{path}" in DOCS, f"docs/cli.md has no section for {path}"


def test_version_and_help_do_not_import_huey():
    import subprocess
    import sys

    code = ("import sys; from edgeworker.cli import main; sys.argv = ['edgeworker', '--help'];\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('huey', 'peewee', 'croniter')), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stderr.strip() == "[]"


def test_version_is_answered_before_click_is_imported():
    import subprocess
    import sys

    code = ("import sys; sys.argv = ['edgeworker', '--version']\n"
            "from edgeworker.entry import main; main()\n"
            "print('click' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.startswith("edgeworker, version ")
    assert result.stderr.strip() == "False"


def section(path: str) -> str:
    return next((part for part in re.split(r"\n## ", DOCS) if part.startswith(f"`{path}")), "")


@pytest.mark.parametrize("path, command", ALL, ids=[p for p, _ in ALL])
def test_every_option_is_in_its_commands_section(path, command):
    """`--json` is documented once for every listing, at the top."""
    for param in command.params:
        if isinstance(param, click.Option) and param.opts != ["--json"]:
            name = max(param.opts, key=len)
            assert name in section(path), \
                f"docs/cli.md's section for {path} does not mention {name}"
    assert "Every listing takes `--json`" in DOCS


def test_the_global_options_are_documented():
    for param in cli.params:
        if isinstance(param, click.Option) and param.opts[0] not in ("-V", "--help", "-h"):
            assert max(param.opts, key=len) in DOCS.split("\n## ")[0]

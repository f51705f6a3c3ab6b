"""Dependencies run one way: the data layer (models) and the duration helpers never reach up into
the config module."""

import ast
import subprocess
import sys
from pathlib import Path

import edgeworker

PACKAGE = Path(edgeworker.__file__).parent


def edgeworker_imports(module: str) -> set[str]:
    """Every edgeworker module `module` imports, at its top or inside a function."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("edgeworker")}


def test_models_does_not_import_config():
    assert "edgeworker.config" not in edgeworker_imports("models")
    # What models pulls in when a job's schedule is shown, in a fresh interpreter.
    code = ("import sys\nfrom edgeworker.models import Job\n"
            "assert Job(every_seconds=90).schedule_text == 'every 1m30s'\n"
            "assert Job(cron='0 * * * *').schedule_text == 'cron 0 * * * *'\n"
            "print('edgeworker.config' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "False\n")


def test_durations_imports_nothing_from_edgeworker():
    assert edgeworker_imports("durations") == set()


def test_the_worker_imports_only_what_an_idle_worker_needs():
    """`edgeworker run`'s modules (entry.run imports these) leave out the command line, cron,
    metrics, OpenSSL, and what only a hook or a metrics file uses."""
    code = ("import sys\nsys.modules['_hashlib'] = None  # as edgeworker.entry.main does\n"
            "import edgeworker.entry, edgeworker.config, edgeworker.logs, edgeworker.daemon\n"
            "print(sorted(m for m in ('click', 'edgeworker.cli', 'croniter', 'prometheus_client',\n"
            "    'edgeworker.metrics', 'ssl', '_ssl', 'tempfile', 'random', 'edgeworker.alerts',\n"
            "    'edgeworker.report', 'edgeworker.postgres')\n"
            "    if m in sys.modules), sys.modules['_hashlib'])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "[] None\n")

"""One line per event in the worker's log: tracebacks only with --debug."""

import subprocess
import sys

import pytest

SCRIPT = '''
import logging, threading, sys
from edgeworker import logs
logs.setup("{fmt}", "{level}")
log = logging.getLogger("edgeworker.test")
try:
    {{}}["missing"]
except KeyError:
    log.exception("housekeeping failed")
def die():
    raise RuntimeError("thread trouble")
thread = threading.Thread(target=die, name="Worker-1")
thread.start()
thread.join()
log.warning("a message\\nover two lines")
'''


def run(fmt: str, level: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(fmt=fmt, level=level)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_traceback_is_one_line_unless_debug(fmt):
    lines = run(fmt, "info")
    assert len(lines) == 3, lines
    assert "housekeeping failed (KeyError: 'missing')" in lines[0]
    assert "thread Worker-1 died (RuntimeError: thread trouble)" in lines[1]
    assert "a message | over two lines" in lines[2]
    assert not any("Traceback" in line for line in lines)


def test_debug_shows_the_traceback():
    text = "\n".join(run("text", "debug"))
    assert text.count("Traceback (most recent call last):") == 2
    assert "RuntimeError: thread trouble" in text

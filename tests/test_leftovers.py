"""The session-end check of tests/conftest.py finds what a test leaves behind, orphans too."""

import os
import subprocess
import sys
import uuid

import leftovers
from workerproc import wait_for


def test_an_orphaned_grandchild_is_found_by_its_mark_and_killed(tmp_path):
    mark = uuid.uuid4().hex
    pid_file = tmp_path / "pid"
    # sh starts sleep in the background and exits: sleep is nobody's child of ours any more.
    subprocess.run(["sh", "-c", f"sleep 60 & echo $! > {pid_file}"], check=True,
                   env={**os.environ, leftovers.MARK: mark})
    pid = int(pid_file.read_text())
    try:
        assert pid not in leftovers.descendants(os.getpid())
        assert leftovers.leftovers(mark, os.getpid()) == {pid: "sleep 60"}
    finally:
        leftovers.kill([pid])
    wait_for(lambda: not leftovers.leftovers(mark, os.getpid()), what="the orphan to die")


def test_a_child_without_the_mark_is_found_as_a_descendant():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env={})
    try:
        # Until the child has exec'd, its command line reads empty ('?')
        wait_for(lambda: leftovers.command_line(child.pid).endswith("time.sleep(60)"))
        found = leftovers.leftovers(uuid.uuid4().hex, os.getpid())
        assert found[child.pid].endswith("time.sleep(60)")
    finally:
        child.kill()
        child.wait()
    assert child.pid not in leftovers.leftovers(uuid.uuid4().hex, os.getpid())

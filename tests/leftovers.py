"""Processes a test session leaves behind: the descendants of pytest, and every process whose
environment carries the session's mark (those a test started and then orphaned: a command's
grandchild, a daemonised helper) — found in /proc, so that nothing needs to be tracked."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

MARK = "EDGEWORKER_TEST_SESSION"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text[text.rindex(")") + 2:].split()[:2]
    return state, int(ppid)


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part) or "?"


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[1], []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def marked(mark: str) -> set[int]:
    needle = f"{MARK}={mark}".encode()
    found = set()
    for pid in _pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.add(pid)
    return found


def leftovers(mark: str, root: int) -> dict[int, str]:
    """Live processes of the session other than `root` itself: pid -> command line. Zombies
    (exited, not yet reaped) are not alive and are left out."""
    found = {}
    for pid in (descendants(root) | marked(mark)) - {root}:
        stat = _stat(pid)
        if stat is not None and stat[0] != "Z":
            found[pid] = command_line(pid)
    return found


def settle(mark: str, root: int, timeout: float = 5.0) -> dict[int, str]:
    """The leftovers once processes that are on their way out have had `timeout` to go."""
    deadline = time.monotonic() + timeout
    while (found := leftovers(mark, root)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

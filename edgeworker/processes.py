"""A run's processes: started in a group (and a cgroup) of their own, recorded while they run,
and ended whole, when the run ends and, after a crash, before the run is tried again.

How a command starts. `subprocess` puts it in a new process group (`process_group=0`, no
`preexec_fn`: that is unsafe in a threaded program and forces fork instead of vfork). It starts
as a `/bin/sh` gate that waits on its stdin, a pipe from the worker, for one line. While it
waits, the worker moves it into the run's cgroup and writes the run's record; then it says "go".
The gate leaves a watcher in the run's group, blocked on the same pipe, and execs the command
(which keeps the gate's pid, so the command is the group's leader). The worker holds the pipe's
other end until the run is over; if the worker dies, the watcher reads end-of-file and kills the
run's cgroup (`cgroup.kill`) or, without one, its whole group (`kill -KILL 0`): commands die with
the worker, children and grandchildren too, not only the direct child as with PR_SET_PDEATHSIG
(`setpriv --pdeathsig` was tried: it calls capset(2), which the shipped unit's system call filter
refuses). A worker killed before "go" leaves a gate that reads end-of-file and exits: nothing of
a run exists outside its cgroup or without its record. Without a cgroup, what left the group
(`setsid`) is ended by the next start.

What identifies a run's processes, and why here. The record is a small file per running task in
a runtime directory on tmpfs: `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`), else
`/run/edgeworker` when writable, else `$XDG_RUNTIME_DIR/edgeworker`, else a directory beside the
database; one subdirectory per database. It holds the process group id, the leader's start time
(`/proc/PID/stat` field 22: a pid that was reused has another one), the boot id, the cgroup and
the worker. Processes do not survive a reboot, so a tmpfs record is exactly as durable as what it
describes, and it costs the SD card nothing; the alternative, the group in the task row, would
need a commit after the process exists (the claim commits before), or an fsync'ed one per run.
Three nets find what is left of a dead worker's runs, all of them at every start:
- the recorded process group (a pid is not reused while it names a group with live members, and
  a recorded leader alive with another start time is another process);
- the run's cgroup, where cgroup v2 is writable (as root, or under systemd with `Delegate=yes`):
  `<worker's cgroup>/edgeworker-<database key>/task-<id>.<attempt>`, ended whole with
  `cgroup.kill` (kernel >= 5.14; else every pid in `cgroup.procs`), removed when the run ends. A
  process that calls `setsid` leaves its group but not its cgroup. The worker itself moves into
  a leaf beside them (`worker-<tag>`, `enclose`), so that `edgeworker-<database key>` holds no
  process itself, as cgroup v2 requires of a cgroup that enables controllers for its children
  (per-job limits would);
- `/proc/*/environ`: every command gets `EDGEWORKER_RUN=<database key>:<task>:<attempt>`, which
  also finds a `setsid` grandchild where there is no cgroup (unless it cleared its environment).
What a callable starts is the worker's, not a run's (it runs in the worker, or in a forked
child adopted as its run): `ProcessTable.enclose` marks the worker itself, its environment
(`EDGEWORKER_RUN=<database key>:0:<tag>`), a cgroup of its own where cgroups are writable and a
record with its process group when it leads one, so that the next start ends what a dead
worker's callables left, and a clean stop what a live one's did (`release`).
Ending is SIGTERM, a short grace, then SIGKILL. When a run's main process exits, whatever it left
in its group and cgroup is ended the same way (as systemd does when a service's main process
exits); the run never waits on a pipe that a leftover holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import threading
import time
import weakref
from dataclasses import asdict, dataclass, replace

TYPE_CHECKING = False  # subprocess is imported by the first command (spawn)
if TYPE_CHECKING:
    import subprocess

logger = logging.getLogger("edgeworker.processes")

RUN_VAR = "EDGEWORKER_RUN"
# Wait for "go [cgroup]"; leave a watcher (not a child of the command) that ends the cgroup, or
# else the group, when the worker's end of the pipe closes while it lives; exec the command.
GATE = ('read -r _ cg || exit 125; exec 3<&0 </dev/null; '
        '( { read -r _ <&3; [ -n "$cg" ] && echo 1 > "$cg/cgroup.kill"; kill -KILL 0; } '
        '>/dev/null 2>&1 & ); exec "$@" 3<&-')
WATCHER = f"/bin/sh\0-c\0{GATE}\0".encode()
POLL = 0.02
# A worker's own record (`ProcessTable.enclose`): task id 0 (task ids start at 1), its name's tag
# for the attempt.
WORKER = 0
# A hook's stdin (edgeworker.alerts), beside the records: a killed worker's is removed with its
# leftovers.
STDIN_PREFIX = "hook-stdin-"
Runs = tuple[int, int] | set[tuple[int, int]] | frozenset[tuple[int, int]] | None  # (task, attempt)


def database_key(database: str | os.PathLike) -> str:
    return hashlib.sha256(_identity(database).encode()).hexdigest()[:16]


def worker_tag(name: str) -> int:
    """The attempt under which the worker of this name keeps its own record: a hash of the name,
    so that two workers of one host on one PostgreSQL database keep apart."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:7], 16)


def _identity(database: str | os.PathLike) -> str:
    """The file's real path; a PostgreSQL URL as written (the same from any directory)."""
    return str(database) if _on_server(database) else os.path.realpath(database)


def _on_server(database: str | os.PathLike) -> bool:
    return str(database).startswith(("postgresql://", "postgres://"))


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return "noboot"


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    return fields[0].decode(), int(fields[2]), int(fields[19])


def _descendants(root: int) -> set[int]:
    """The processes below `root` (its children, theirs, ...), as /proc shows them now."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        children.setdefault(int(data[data.rfind(b")") + 2:].split()[1]), []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int, start: int | None = None) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and (start is None or stat[2] == start)


def _is_watcher(pid: int) -> bool:
    """Is this the gate's watcher (a fork of the gate, so it has the gate's command line)?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read(len(WATCHER)) == WATCHER
    except OSError:
        return False


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _environ_has(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return needle in handle.read()
    except OSError:
        return False


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def _mkdir(path: str, mode: int = 0o777) -> None:
    """Make the directory unless it is there (then whatever mkdir says is ignored: a read-only
    file system may say EROFS before EEXIST)."""
    try:
        os.mkdir(path, mode)
    except OSError:
        if not os.path.isdir(path):
            raise


# -- cgroups ------------------------------------------------------------------------------------

def _own_cgroup() -> str | None:
    """This process's cgroup v2 directory, or None without a cgroup v2 hierarchy."""
    try:
        with open("/proc/self/cgroup") as handle:
            own = next((line[3:].strip() for line in handle if line.startswith("0::")), None)
        with open("/proc/self/mountinfo") as handle:
            mounts = [line.split() for line in handle]
    except OSError:
        return None
    if own is None:
        return None
    for fields in mounts:
        sep = fields.index("-")
        if fields[sep + 1] != "cgroup2":
            continue
        root, point = fields[3], fields[4]
        if own == root or own.startswith(root.rstrip("/") + "/"):
            below = own[len(root):].strip("/")
            return os.path.join(point, below) if below else point
    return None


def _move_into(cgroup: str, pid: int) -> None:
    """Make `cgroup` and move `pid` into it; raises OSError, leaving no cgroup made."""
    try:
        _mkdir(cgroup)
        _write(os.path.join(cgroup, "cgroup.procs"), str(pid))
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(cgroup)
        raise


def _cgroup_pids(cgroup: str) -> list[int]:
    try:
        return [int(line) for line in _read(os.path.join(cgroup, "cgroup.procs")).split()]
    except (OSError, ValueError):
        return []


def _cgroup_populated(cgroup: str) -> bool:
    try:
        return "populated 1" in _read(os.path.join(cgroup, "cgroup.events"))
    except OSError:
        return False


def _cgroup_kill(cgroup: str) -> None:
    try:
        _write(os.path.join(cgroup, "cgroup.kill"), "1")
        return
    except FileNotFoundError:
        if not os.path.exists(cgroup):
            return
    except OSError:
        pass
    for _ in range(10):  # before 5.14: kill what is there, and what it forks meanwhile
        pids = _cgroup_pids(cgroup)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _cgroup_remove(cgroup: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    pause = 0.001  # its last processes are usually gone within a millisecond
    while _cgroup_populated(cgroup) and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 2, POLL)
    try:
        os.rmdir(cgroup)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("cannot remove cgroup %s: %s", cgroup, exc)


# -- a run's record -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    """What identifies one run's processes (a file in the runtime directory while it runs)."""

    task_id: int
    attempt: int
    pgid: int
    start: int  # the leader's start time, /proc/PID/stat field 22
    boot: str
    cgroup: str | None
    worker: int  # the pid of the worker that started it


def runtime_directory(database: str | os.PathLike) -> str:
    """Where the records of a database's running tasks live (see the module docstring)."""
    key = database_key(database)
    candidates = []
    if os.environ.get("RUNTIME_DIRECTORY"):
        candidates.append(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    candidates.append("/run/edgeworker")
    if os.environ.get("XDG_RUNTIME_DIR"):
        candidates.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "edgeworker"))
    for base in candidates:
        directory = os.path.join(base, key)
        try:
            _mkdir(base, 0o755)
            _mkdir(directory, 0o700)
        except OSError:
            continue
        if os.access(directory, os.W_OK | os.X_OK):
            return directory
    if _on_server(database):  # nothing of the database is on this disk
        return os.path.join(os.path.expanduser("~"), ".edgeworker-runs", key)
    return f"{os.path.realpath(database)}.runs"


class Tree:
    """The processes of one running command: its group, and its cgroup if it has one."""

    def __init__(self, table: ProcessTable, proc: subprocess.Popen, record: Record,
                 path: str | None, gate: int | None):
        self.table = table
        self.proc = proc
        self.gate = gate  # the worker's end of the pipe the watcher waits on
        self.record = record
        self.path = path
        self.cgroup = record.cgroup or None
        # Without a cgroup, a process that called setsid is found by its environment (only
        # processes younger than the run's leader are read).
        self.marker = (_marker(table.key, record.task_id, record.attempt)
                       if self.cgroup is None and table.directory is not None else None)

    @property
    def pgid(self) -> int:
        return self.record.pgid

    def signal(self, sig: int, members: set[int] | None = None) -> None:
        """Send `sig` to every process of the run (SIGKILL ends a cgroup whole), and to
        `members` found by `members()`."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)
        for pid in members or ():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        if self.cgroup is not None:
            if sig == signal.SIGKILL:
                _cgroup_kill(self.cgroup)
            else:
                for pid in _cgroup_pids(self.cgroup):
                    with contextlib.suppress(OSError):
                        os.kill(pid, sig)

    def members(self) -> set[int]:
        """Live processes of the run (the group's and the cgroup's, zombies left out)."""
        if self.cgroup is not None:  # every process of the group is in it: no /proc scan
            if not _cgroup_populated(self.cgroup):
                return set()
            return {pid for pid in _cgroup_pids(self.cgroup) if _alive(pid)}
        found: set[int] = set()
        try:
            os.killpg(self.pgid, 0)
            grouped = True
        except (ProcessLookupError, PermissionError):
            grouped = False
        if grouped or self.marker is not None:
            me = os.getpid()
            for pid in _pids():
                stat = _stat(pid)
                if stat is None or stat[0] in ("Z", "X") or pid == me:
                    continue
                if stat[1] == self.pgid or (self.marker is not None
                                            and stat[2] >= self.record.start
                                            and _environ_has(pid, self.marker)):
                    found.add(pid)
        return found

    def end(self, grace: float) -> int:
        """End whatever is left of the run: SIGTERM, up to `grace` seconds, SIGKILL. Returns how
        many processes were alive, the run's watcher left out (it goes at once, unasked)."""
        left = self.members()
        watchers = {pid for pid in left if _is_watcher(pid)}
        for pid in watchers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        left -= watchers
        if not left:
            return 0
        self.signal(signal.SIGTERM, left)
        deadline = time.monotonic() + grace
        pause = 0.001
        while (still := self.members() - watchers) and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, POLL)
        if still:
            self.signal(signal.SIGKILL, still)
        return len(left)

    def close(self) -> None:
        """The run is over and its processes ended: remove its cgroup and its record."""
        self.table._forget(self)
        if self.gate is not None:
            os.close(self.gate)
            self.gate = None
        if self.cgroup is not None:
            _cgroup_remove(self.cgroup)
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class ProcessTable:
    """The running commands of one database's worker, and what a dead worker left behind."""

    def __init__(self, key: str, directory: str | os.PathLike | None,
                 cgroups: str | os.PathLike | None):
        self.key = key
        self.directory = None if directory is None else os.fspath(directory)
        # the parent of the runs' cgroups, or None: process groups only
        self.cgroups = None if cgroups is None else os.fspath(cgroups)
        self.running: dict[int, Tree] = {}
        self.lock = threading.Lock()
        self.own: tuple[Record, str | None] | None = None  # this worker's record (`enclose`)
        _tables.add(self)

    @classmethod
    def for_database(cls, database: str | os.PathLike, use_cgroups: bool = True) -> ProcessTable:
        key = database_key(database)
        return cls(key, runtime_directory(database), _runs_cgroup(key) if use_cgroups else None)

    def describe(self) -> str:
        cgroups = (f"a cgroup each under {self.cgroups}" if self.cgroups else
                   "process groups only (no writable cgroup v2: a process that calls setsid "
                   "leaves its run's group until the next start)")
        return f"commands run in {cgroups}; records in {self.directory}"

    # -- starting ---------------------------------------------------------------------------

    def spawn(self, argv: list[str], env: dict[str, str], cwd: str | None, task_id: int,
              attempt: int) -> Tree:
        """Start `argv` as the run (task_id, attempt); raises OSError like Popen."""
        import subprocess  # here: a worker whose jobs are callables never loads it

        env = {**env, RUN_VAR: f"{self.key}:{task_id}:{attempt}"}
        wrapped = ["/bin/sh", "-c", GATE, "edgeworker-run", *argv]
        gate_read, gate_write = os.pipe()
        try:
            proc = subprocess.Popen(wrapped, stdin=gate_read, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                    process_group=0, close_fds=True)
        except BaseException:
            os.close(gate_write)
            raise
        finally:
            os.close(gate_read)
        try:
            tree = self._register(proc, task_id, attempt, gate_write)
            os.write(gate_write, f"go {tree.cgroup or ''}\n".encode())
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
            os.close(gate_write)
            raise
        return tree

    def adopt(self, proc, task_id: int, attempt: int) -> Tree:
        """Supervise, as the run (task_id, attempt), a process that already leads a process
        group of its own (a forked child that called setsid, such as a callable run in a child
        process): recorded, ended whole with its group, stopped by `kill_all`. `proc` offers what
        `Popen` does (pid, poll, wait, stdout, returncode). It gets no cgroup and no watcher."""
        return self._register(proc, task_id, attempt, None, move=False)

    def _register(self, proc: subprocess.Popen, task_id: int, attempt: int, gate: int | None,
                  move: bool = True) -> Tree:
        cgroup = self._make_cgroup(proc.pid, task_id, attempt) if move else None
        stat = _stat(proc.pid)
        record = Record(task_id, attempt, proc.pid, stat[2] if stat else 0, boot_id(),
                        str(cgroup) if cgroup else None, os.getpid())
        path = self._record(record, f"task {task_id}'s processes")
        tree = Tree(self, proc, record, path, gate)
        with self.lock:
            self.running[proc.pid] = tree
        return tree

    def _make_cgroup(self, pid: int, task_id: int, attempt: int) -> str | None:
        if self.cgroups is None:
            return None
        cgroup = os.path.join(self.cgroups, f"task-{task_id}.{attempt}")
        try:
            _move_into(cgroup, pid)
        except OSError as exc:
            logger.warning("cannot give task %s a cgroup (%s): commands run in process groups "
                           "only from now on", task_id, exc)
            self.cgroups = None
            return None
        return cgroup

    def _record(self, record: Record, what: str) -> str | None:
        """Write `record` into the runtime directory; its path, or None when it cannot be."""
        if self.directory is None:
            return None
        path = os.path.join(self.directory, f"{record.task_id}.{record.attempt}")
        try:
            os.makedirs(self.directory, 0o700, exist_ok=True)
            _write(path, json.dumps(asdict(record)))
        except OSError as exc:
            logger.warning("cannot record %s in %s: %s", what, self.directory, exc)
            return None
        return path

    def _forget(self, tree: Tree) -> None:
        with self.lock:
            self.running.pop(tree.pgid, None)

    def enclose(self, name: str) -> None:
        """Mark this worker, so that what its callables start is ended at the next start when
        it dies (a command's processes are its run's, `spawn`; an isolated callable's child is
        adopted): `EDGEWORKER_RUN=<key>:0:<tag>` in its environment, which every program they
        start inherits; where cgroups are writable, a cgroup of its own (`worker-<tag>`), which
        holds what they fork too, and leaves with `setsid`; and a record, with its process group
        when it leads one (under systemd, or a shell's job). Call once, after the start's
        recovery and before any run: it changes the environment, which no other thread may be
        reading then."""
        tag, me = worker_tag(name), os.getpid()
        os.environ[RUN_VAR] = f"{self.key}:{WORKER}:{tag}"
        cgroup = None
        if self.cgroups is not None:
            cgroup = os.path.join(self.cgroups, f"worker-{tag}")
            try:
                _move_into(cgroup, me)
            except OSError as exc:
                logger.warning("cannot move the worker into cgroup %s (%s): what its callables "
                               "start is found by its environment only", cgroup, exc)
                cgroup = None
        _, group, start = _stat(me) or ("", 0, 0)
        record = Record(WORKER, tag, me if group == me else 0, start, boot_id(), cgroup, me)
        self.own = (record, self._record(record, "the worker"))

    def release(self, grace: float) -> int:
        """A clean stop: end what this worker's callables left running (SIGTERM, `grace`,
        SIGKILL), as systemd ends a stopped service's leftovers: its cgroup's, its descendants,
        and those that hold its mark; remove its cgroup and its record. Returns how many
        processes were alive. Its process group is left alone: a shell's pipeline shares it
        (`edgeworker run | tee`)."""
        if self.own is None:
            return 0
        record, path = self.own
        self.own = None
        cgroup = record.cgroup
        if cgroup is not None:
            try:  # back where it came from, so that the cgroup can be ended whole
                _write(os.path.join(os.path.dirname(self.cgroups), "cgroup.procs"),
                       str(os.getpid()))
            except OSError as exc:
                logger.warning("cannot leave cgroup %s: %s", cgroup, exc)
                cgroup = None
        pids, _ = self._collect([replace(record, pgid=0, cgroup=cgroup)],
                                [_marker(self.key, record.task_id, record.attempt)])
        for pid in _descendants(os.getpid()):  # a fork's child, where no cgroup holds it
            if pid not in pids and (stat := _stat(pid)) and stat[0] != "Z":
                pids[pid] = stat[2]
        _end(pids, grace)
        if cgroup is not None:
            _cgroup_kill(cgroup)
            _cgroup_remove(cgroup)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return len(pids)

    def close(self, grace: float = 2.0) -> None:
        """End this worker's callables' leftovers (`release`), and remove this database's
        cgroup parent and record directory if no run is left in them (a clean stop)."""
        self.release(grace)
        for directory in (self.cgroups, self.directory):
            if directory is not None:
                with contextlib.suppress(OSError):
                    os.rmdir(directory)

    def kill_all(self) -> int:
        """SIGKILL every running command whole (a forced stop of the worker)."""
        with self.lock:
            trees = list(self.running.values())
        for tree in trees:
            tree.signal(signal.SIGKILL)
        return len(trees)

    def find(self, task_id: int, attempt: int) -> Record | None:
        if self.directory is None:
            return None
        return _read_record(os.path.join(self.directory, f"{task_id}.{attempt}"))

    # -- what a dead worker left ------------------------------------------------------------

    def records(self) -> list[tuple[str, Record]]:
        if self.directory is None or not os.path.isdir(self.directory):
            return []
        found = []
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            record = _read_record(path)
            if record is not None:
                found.append((path, record))
        return found

    def leftovers(self, only: Runs = None) -> tuple[dict[int, int], list[str]]:
        """Live processes of runs that no live worker supervises, and of dead workers'
        callables: {pid: start time}, and their cgroups. Call only while holding the database's
        worker lock, or with `only` naming the runs, (task_id, attempt) or a set of them, that no
        live worker supervises ((0, `worker_tag(name)`): what the worker of that name started,
        if it is dead)."""
        only = {only} if isinstance(only, tuple) else only
        boot = boot_id()
        records, live = [], []
        for _, record in self.records():
            if record.boot != boot:
                continue
            if record.task_id == WORKER and _alive(record.worker, record.start):
                live.append(record)  # a live worker's own (another of this host's, on PostgreSQL)
            elif only is None or (record.task_id, record.attempt) in only:
                records.append(record)
        spared = {(WORKER, record.attempt) for record in live}
        markers = ([f"{RUN_VAR}={self.key}:".encode()] if only is None
                   else [_marker(self.key, *run) for run in sorted(only) if run not in spared])
        return self._collect(records, markers, below=only is None,
                             spare=[_marker(self.key, *run) for run in sorted(spared)],
                             kept=[record.cgroup for record in live if record.cgroup])

    def _collect(self, records: list[Record], markers: list[bytes], below: bool = False,
                 spare: list[bytes] = (), kept: list[str] = ()) -> tuple[dict[int, int], list[str]]:
        """The live processes of these records' groups and cgroups (with `below`, of every cgroup
        under this database's but those `kept`), and those whose environment holds a marker but
        none to `spare`: {pid: start time}, and the cgroups; this process left out."""
        pids: dict[int, int] = {}
        cgroups: list[str] = []
        groups: set[int] = set()
        for record in records:
            leader = _stat(record.pgid) if record.pgid > 0 else None
            if record.pgid > 0 and (leader is None or leader[1] != record.pgid
                                    or leader[2] == record.start):
                groups.add(record.pgid)  # else the pid is another process's now
            if record.cgroup:
                cgroups.append(record.cgroup)
        if below and self.cgroups is not None and os.path.isdir(self.cgroups):
            under = [os.path.join(self.cgroups, name) for name in os.listdir(self.cgroups)]
            cgroups += [path for path in under
                        if os.path.isdir(path) and path not in cgroups and path not in kept]
        me = os.getpid()
        for cgroup in cgroups:
            for pid in _cgroup_pids(cgroup):
                if pid != me and (stat := _stat(pid)) and stat[0] != "Z":
                    pids[pid] = stat[2]
        for pid in _pids():
            if pid == me or pid in pids:
                continue
            stat = _stat(pid)
            if stat is None or stat[0] == "Z":
                continue
            if stat[1] in groups or (any(_environ_has(pid, m) for m in markers)
                                     and not any(_environ_has(pid, m) for m in spare)):
                pids[pid] = stat[2]
        return pids, cgroups

    def end_leftovers(self, grace: float, only: Runs = None) -> int:
        """End every process a dead worker's runs (and callables) left (SIGTERM, `grace`,
        SIGKILL), remove their cgroups and records; returns how many processes were alive."""
        pids, cgroups = self.leftovers(only)
        _end(pids, grace)
        for cgroup in cgroups:
            _cgroup_kill(cgroup)
            _cgroup_remove(cgroup)
        only = {only} if isinstance(only, tuple) else only
        for path, record in self.records():
            if record.task_id == WORKER and _alive(record.worker, record.start):
                continue
            if only is None or (record.task_id, record.attempt) in only:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        if only is None and self.directory is not None and os.path.isdir(self.directory):
            for name in os.listdir(self.directory):
                if name.startswith(STDIN_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.directory, name))
        return len(pids)


def _marker(key: str, task_id: int, attempt: int) -> bytes:
    return f"{RUN_VAR}={key}:{task_id}:{attempt}\0".encode()


def _end(pids: dict[int, int], grace: float) -> None:
    """SIGTERM these processes ({pid: start time}: a pid reused meanwhile is left alone), wait up
    to `grace` seconds, SIGKILL those still alive."""
    for pid, start in pids.items():
        if _alive(pid, start):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (any(_alive(pid, start) for pid, start in pids.items())
           and time.monotonic() < deadline):
        time.sleep(POLL)
    for pid, start in pids.items():
        if _alive(pid, start):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# Every table of this process, for `_forked`.
_tables: weakref.WeakSet[ProcessTable] = weakref.WeakSet()


def _forked() -> None:
    """In a forked child (a callable's `multiprocessing` pool, an isolated callable): close the
    running commands' gate pipes, which the fork copied. A command's watcher ends it when the
    worker's end closes; a child that kept a copy would keep it alive after the worker died."""
    for table in list(_tables):
        for tree in list(table.running.values()):
            if tree.gate is not None:
                with contextlib.suppress(OSError):
                    os.close(tree.gate)
                tree.gate = None


os.register_at_fork(after_in_child=_forked)


def _read_record(path: str) -> Record | None:
    try:
        return Record(**json.loads(_read(path)))
    except (OSError, ValueError, TypeError):
        return None


def _runs_cgroup(key: str) -> str | None:
    """Create (or find) the parent of this database's runs' cgroups, or None where cgroup v2
    is not writable here."""
    own = _own_cgroup()
    if own is None:
        logger.info("no cgroup v2 hierarchy: commands run in process groups only")
        return None
    parent = os.path.join(own, f"edgeworker-{key}")
    try:
        _mkdir(parent)
    except OSError as exc:
        logger.info("cgroup %s is not writable (%s): commands run in process groups only "
                    "(a process that calls setsid leaves its run's group)", own, exc.strerror)
        return None
    if not os.access(os.path.join(own, "cgroup.procs"), os.W_OK):
        logger.info("cannot move processes out of cgroup %s: commands run in process groups "
                    "only", own)
        return None
    return parent

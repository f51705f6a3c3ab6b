"""Boot a real systemd as PID 1 in private namespaces, for tests of our units.

This module owns the whole life of one throwaway systemd: the namespaces and
mounts it boots in, the unit search path (only the test's units and a few
stub targets, never the host's), talking to it with systemctl/journalctl via
nsenter, and tearing it down so that no process, mount or cgroup is left on
the host. Tests skip with `systemd_unavailable_reason()` where it cannot work.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, TypeVar

SYSTEMD = Path("/lib/systemd/systemd")
JOURNALD = Path("/lib/systemd/systemd-journald")
DEFAULT_TARGET = "harness.target"
NS_STAGING = "/run/harness"  # the host's staging dir, as seen inside the namespace
PREFIX = "edgeworker-harness-"  # of our cgroups and staging dirs, followed by our PID
UNSHARE = (
    "unshare --pid --fork --kill-child --mount --uts --ipc --cgroup --propagation private"
).split()

# Paths a test may put files under: overlays keep the host's content visible
# but take writes into the staging dir; tmpfs ones start empty.
OVERLAY_ROOTS = ("/etc", "/opt")
TMPFS_ROOTS = ("/run", "/tmp", "/var/tmp", "/var/lib", "/var/log", "/var/cache")

_NS_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}

T = TypeVar("T")


def _stub_target(description: str, extra: str = "") -> str:
    return f"[Unit]\nDescription={description} (harness stub)\n{extra}"


# The default dependencies of a service (Requires=sysinit.target, After=basic.target,
# Conflicts=shutdown.target) need these names to exist; they are empty stubs here.
_BASE_UNITS = {
    DEFAULT_TARGET: _stub_target(
        "Harness default target", "Requires=basic.target\nAfter=basic.target\nAllowIsolate=yes\n"
    ),
    "basic.target": _stub_target(
        "Basic System",
        "Requires=sysinit.target\nWants=sockets.target\nAfter=sysinit.target sockets.target\n",
    ),
    "sysinit.target": _stub_target("System Initialization"),
    "sockets.target": _stub_target("Sockets"),
    "timers.target": _stub_target("Timers"),
    "paths.target": _stub_target("Paths"),
    "local-fs.target": _stub_target("Local File Systems"),
    "network.target": _stub_target("Network"),
    "network-online.target": _stub_target("Network is Online"),
    "multi-user.target": _stub_target("Multi-User System"),
    "shutdown.target": _stub_target("Shutdown", "DefaultDependencies=no\nRefuseManualStart=yes\n"),
    # `systemctl exit` starts exit.target; in container mode exit-force makes PID 1
    # exit with the code given to `systemctl exit`, after stopping every unit in order.
    "exit.target": _stub_target(
        "Exit the harness",
        "DefaultDependencies=no\nRequires=systemd-exit.service\nAfter=systemd-exit.service\n"
        "AllowIsolate=yes\n",
    ),
    "systemd-exit.service": _stub_target(
        "Exit the harness",
        "DefaultDependencies=no\nRequires=shutdown.target\nAfter=shutdown.target\n"
        "SuccessAction=exit-force\n",
    ),
}

# A private journald, so that StandardOutput=journal (the default) is readable with
# journalctl. No /dev/log socket: its Symlinks= would be the only writer to /dev.
_JOURNALD_UNITS = {
    "systemd-journald.socket": """\
[Unit]
Description=Journal Socket (harness)
DefaultDependencies=no
Before=sockets.target

[Socket]
ListenDatagram=/run/systemd/journal/socket
ListenStream=/run/systemd/journal/stdout
PassCredentials=yes
PassSecurity=yes
ReceiveBuffer=8M
Service=systemd-journald.service
SocketMode=0666
Timestamping=us
""",
    "systemd-journald.service": f"""\
[Unit]
Description=Journal Service (harness)
DefaultDependencies=no
Requires=systemd-journald.socket
After=systemd-journald.socket
Before=sysinit.target

[Service]
Type=notify
ExecStart={JOURNALD}
Sockets=systemd-journald.socket
Restart=always
RestartSec=0
StandardOutput=null
FileDescriptorStoreMax=4224
RuntimeDirectory=systemd/journal
RuntimeDirectoryPreserve=yes
""",
}

# Manager settings for every boot. DefaultLimitCORE=0 because kernel.core_pattern is
# global: a service killed by the watchdog's SIGABRT would otherwise drop a core file
# in its working directory, which is the host's real root file system.
_SYSTEM_CONF = """\
[Manager]
DefaultLimitCORE=0
ShowStatus=no
"""


class SystemdBootError(RuntimeError):
    """systemd did not come up (or the namespace could not be built)."""


def _cgroup2_mount() -> Path | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return Path(left.split(" ")[4])
    return None


def _static_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "booting systemd in namespaces needs root"
    for tool in ("unshare", "nsenter", "mount", "umount", "mountpoint", "cp", "env"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install util-linux coreutils)"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} not found (apt-get install systemd)"
    if not os.access(JOURNALD, os.X_OK):
        return f"{JOURNALD} not found (apt-get install systemd)"
    if shutil.which("systemctl") is None or shutil.which("journalctl") is None:
        return "systemctl/journalctl not found (apt-get install systemd)"
    cgroup2 = _cgroup2_mount()
    if cgroup2 is None:
        return "no cgroup2 hierarchy is mounted on the host"
    if not os.access(cgroup2, os.W_OK):
        return f"cgroup2 hierarchy at {cgroup2} is not writable"
    return None


@functools.cache
def systemd_unavailable_reason() -> str | None:
    """Why a namespaced systemd cannot be booted here, or None when it can.

    The last check is a real boot (about a second), done once per process.
    """
    reason = _static_unavailable_reason()
    if reason is not None:
        return reason
    try:
        with BootedSystemd({}, journald=False, boot_timeout=20.0):
            pass
    except Exception as exc:  # any failure means: cannot test against systemd here
        return f"cannot boot systemd as PID 1 in namespaces here: {exc!r}"
    return None


def _parent_death_signal_and_cgroup(cgroup: Path) -> Callable[[], None]:
    def preexec() -> None:
        # If pytest dies, unshare dies; its --kill-child then takes the namespace down.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        (cgroup / "cgroup.procs").write_text("0")

    return preexec


def _remove_cgroup_tree(root: Path) -> None:
    for dirpath, _dirnames, _files in sorted(os.walk(root), key=lambda w: -len(w[0])):
        os.rmdir(dirpath)


def _remove_leftovers(cgroup2: Path) -> None:
    """Drop cgroups and staging dirs left by a harness whose process was killed.

    Its namespace died with it (parent-death signal), so they are empty.
    """
    for cg in cgroup2.glob(PREFIX + "*"):
        if not _owner_alive(cg.name):
            try:
                _remove_cgroup_tree(cg)
            except OSError:
                pass
    for staging in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        if not _owner_alive(staging.name):
            shutil.rmtree(staging, ignore_errors=True)


def _owner_alive(name: str) -> bool:
    owner = name[len(PREFIX) :].split("-")[0]
    return not owner.isdigit() or Path(f"/proc/{owner}").exists()


class BootedSystemd:
    """A systemd booted as PID 1 in new PID, mount, UTS, IPC and cgroup namespaces.

    units:   {name: text or host file} (a name like "x.service.d/y.conf" is a drop-in), or
             a directory of unit files; with a few stub targets (and a private journald)
             they are the whole unit search path.
    files:   {absolute path in the namespace: str | bytes | host Path to copy}, under
             OVERLAY_ROOTS (/etc, /opt: host content plus these files) or TMPFS_ROOTS.
    binds:   {path in the namespace: host path} bind mounts, read-write.
    users:   system users (and same-named groups) to add to the namespace's /etc/passwd.
    overlays: more directories (say /usr, for dpkg) whose writes go to the staging dir.
    """

    _counter = 0

    def __init__(
        self,
        units: Mapping[str, str | Path] | Path,
        *,
        files: Mapping[str, str | bytes | Path] | None = None,
        binds: Mapping[str, str | Path] | None = None,
        users: Iterable[str] = (),
        overlays: Iterable[str] = (),
        journald: bool = True,
        boot_timeout: float = 20.0,
        shutdown_timeout: float = 20.0,
    ) -> None:
        self._units = units
        self._files = dict(files or {})
        self._binds = {ns: Path(host) for ns, host in (binds or {}).items()}
        self._users = list(users)
        self._overlays = OVERLAY_ROOTS + tuple(overlays)
        self._journald = journald
        self._boot_timeout = boot_timeout
        self._shutdown_timeout = shutdown_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.pid = 0  # host PID of the namespace's systemd
        self.exit_code: int | None = None  # unshare's return code after shutdown
        self.staging: Path | None = None
        self.cgroup: Path | None = None

    # -- life cycle -------------------------------------------------------------

    def __enter__(self) -> BootedSystemd:
        try:
            self._boot()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _boot(self) -> None:
        reason = _static_unavailable_reason()
        if reason is not None:
            raise SystemdBootError(reason)
        cgroup2 = _cgroup2_mount()
        assert cgroup2 is not None
        _remove_leftovers(cgroup2)
        BootedSystemd._counter += 1
        name = f"{PREFIX}{os.getpid()}-{BootedSystemd._counter}"
        self.cgroup = cgroup2 / name
        self.cgroup.mkdir()
        self.staging = Path(tempfile.mkdtemp(prefix=name + "-"))
        self._prepare_staging(self.staging)
        self._log = open(self.staging / "boot.log", "wb")
        self._proc = subprocess.Popen(
            [*UNSHARE, "/bin/sh", str(self.staging / "boot.sh")],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd="/",
            env=_NS_ENV,
            preexec_fn=_parent_death_signal_and_cgroup(self.cgroup),
        )
        deadline = time.monotonic() + self._boot_timeout
        self.pid = self._wait_for_child_pid(deadline)
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            if (self.path("/run/systemd/private")).exists():
                state = self.systemctl("is-system-running", timeout=5).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.05)
        raise SystemdBootError(
            f"systemd not up after {self._boot_timeout}s (state {state!r})\n{self._diagnostics()}"
        )

    def _wait_for_child_pid(self, deadline: float) -> int:
        assert self._proc is not None
        children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children")
        while time.monotonic() < deadline:
            self._check_alive()
            pids = children.read_text().split()
            if pids:
                return int(pids[0])
            time.sleep(0.01)
        raise SystemdBootError("unshare did not fork its child\n" + self._diagnostics())

    def _check_alive(self) -> None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise SystemdBootError(
                f"namespace init exited with {self._proc.returncode} during boot\n"
                + self._diagnostics()
            )

    def close(self) -> None:
        """Stop every unit in order, let PID 1 exit, then make sure nothing is left."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                if self.pid:
                    self.systemctl("exit", "--no-block", timeout=5)
                self._proc.wait(self._shutdown_timeout)
            except (OSError, subprocess.SubprocessError):
                self._kill_everything()
        if self._proc is not None:
            self.exit_code = self._proc.returncode
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.cgroup is not None and self.cgroup.exists():
            self._kill_everything()
            deadline = time.monotonic() + 5
            while True:
                try:
                    _remove_cgroup_tree(self.cgroup)
                    break
                except OSError:  # EBUSY until the killed tasks are reaped
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def _kill_everything(self) -> None:
        assert self.cgroup is not None
        kill = self.cgroup / "cgroup.kill"
        if kill.exists():
            kill.write_text("1")
        elif self._proc is not None:
            self._proc.kill()
        if self._proc is not None:
            self._proc.wait(10)

    # -- staging -----------------------------------------------------------------

    def _prepare_staging(self, staging: Path) -> None:
        unit_dir = staging / "units"
        unit_dir.mkdir()
        units = dict(_BASE_UNITS)
        if self._journald:
            units.update(_JOURNALD_UNITS)
            units["sysinit.target"] = _stub_target(
                "System Initialization",
                "Wants=systemd-journald.socket systemd-journald.service\n"
                "After=systemd-journald.socket systemd-journald.service\n",
            )
        for name, text in units.items():
            (unit_dir / name).write_text(text)
        if isinstance(self._units, Path):
            for src in self._units.iterdir():
                if src.is_file():
                    shutil.copy2(src, unit_dir / src.name)
                elif src.is_dir():  # drop-in and .wants directories
                    shutil.copytree(src, unit_dir / src.name, dirs_exist_ok=True)
        else:
            for name, content in self._units.items():  # "x.service.d/y.conf" is a drop-in
                (unit_dir / name).parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, Path):
                    shutil.copy2(content, unit_dir / name)
                else:
                    (unit_dir / name).write_text(content)
        (staging / "empty").mkdir()
        (staging / "dev").mkdir()
        (staging / "run").mkdir()
        for root in self._overlays:
            (staging / "overlay" / root.strip("/") / "upper").mkdir(parents=True)
            (staging / "overlay" / root.strip("/") / "work").mkdir()
        files = dict(self._files)
        files["/etc/systemd/system.conf.d/50-harness.conf"] = _SYSTEM_CONF
        if self._users:
            files.update(self._user_files())
        for ns_path, content in files.items():
            self._stage_file(staging, ns_path, content)
        for ns_path, host in self._binds.items():
            if not host.exists():
                raise FileNotFoundError(f"bind source {host} does not exist")
            if _writable_root(ns_path) is None and not Path(ns_path).exists():
                raise ValueError(f"bind target {ns_path} must exist or be under a writable root")
        (staging / "boot.sh").write_text(self._boot_script(staging))

    def _stage_file(self, staging: Path, ns_path: str, content: str | bytes | Path) -> None:
        root = _writable_root(ns_path)
        if root is None:
            raise ValueError(f"{ns_path}: files go under {OVERLAY_ROOTS + TMPFS_ROOTS}")
        rel = os.path.relpath(ns_path, root)
        if root in OVERLAY_ROOTS:
            dest = staging / "overlay" / root.strip("/") / "upper" / rel
        else:
            dest = staging / "tree" / root.strip("/") / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copy2(content, dest)
        elif isinstance(content, bytes):
            dest.write_bytes(content)
        else:
            dest.write_text(content)

    def _user_files(self) -> dict[str, str]:
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        used = {int(line.split(":")[2]) for line in (passwd + group).splitlines() if line}
        free = (uid for uid in range(999, 100, -1) if uid not in used)
        for name, uid in zip(self._users, free, strict=False):
            passwd += f"{name}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n"
            group += f"{name}:x:{uid}:\n"
        return {"/etc/passwd": passwd, "/etc/group": group}

    def _boot_script(self, staging: Path) -> str:
        q = shlex.quote
        s = q(str(staging))
        h = NS_STAGING
        lines = [
            "set -eu",
            # Else mount(8) keeps notes in /run/mount/utab: the host's file, until /run is ours.
            'mount() { command mount --no-mtab "$@"; }',
            'umount() { command umount --no-mtab "$@"; }',
            "mount --make-rprivate /",
            # Our own /proc for the new PID namespace. /proc/sys read-only: systemd as
            # PID 1 writes global sysctls (core_pattern, nr_open) that are not namespaced.
            "mount -t proc -o nosuid,nodev,noexec proc /proc",
            "for p in /proc/sys /proc/sysrq-trigger; do"
            ' if [ -e "$p" ]; then mount --bind "$p" "$p"; mount -o remount,bind,ro "$p"; fi;'
            " done",
            # A cgroup2 rooted at the harness cgroup (cgroup namespace), /sys read-only.
            "if mountpoint -q /sys/fs/cgroup; then umount -R /sys/fs/cgroup; fi",
            "mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup",
            "mount -o remount,bind,ro /sys",
            # The new /run is built aside, with the staging dir bound into it, and then
            # moved in place: that keeps the staging dir reachable wherever TMPDIR is.
            f"mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs {s}/run",
            f"mkdir {s}/run/harness; mount --bind {s} {s}/run/harness",
            # Bind sources are caught now, before /run, /tmp... hide them; moved in later.
            f"mkdir {s}/run/harness-binds",
            *(
                f"{'mkdir' if host.is_dir() else 'touch'} {s}/run/harness-binds/{i};"
                f" mount --bind {q(str(host))} {s}/run/harness-binds/{i}"
                for i, host in enumerate(self._binds.values())
            ),
            f"mount --move {s}/run /run",
            # A private /dev with only the basic nodes (no console: PID 1 logs to journald).
            f"mount -t tmpfs -o mode=0755,nosuid,size=4m tmpfs {h}/dev",
            "for n in null zero full random urandom tty; do"
            f" touch {h}/dev/$n; mount --bind /dev/$n {h}/dev/$n; done",
            f"mkdir {h}/dev/pts {h}/dev/shm {h}/dev/mqueue",
            f"ln -s pts/ptmx {h}/dev/ptmx; ln -s /proc/self/fd {h}/dev/fd",
            f"ln -s /proc/self/fd/0 {h}/dev/stdin; ln -s /proc/self/fd/1 {h}/dev/stdout;"
            f" ln -s /proc/self/fd/2 {h}/dev/stderr",
            f"mount --move {h}/dev /dev",
            "mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts",
            "mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm",
            "mount -t mqueue -o nosuid,nodev,noexec mqueue /dev/mqueue",
        ]
        for root in self._overlays:
            o = f"{h}/overlay/{root.strip('/')}"
            lines.append(
                f"mount -t overlay overlay -o lowerdir={root},upperdir={o}/upper,workdir={o}/work"
                f" {root}"
            )
        for root in TMPFS_ROOTS:
            if root != "/run":
                mode = "1777" if root.endswith("tmp") else "0755"
                lines.append(f"mount -t tmpfs -o mode={mode},nosuid,nodev tmpfs {root}")
            if (staging / "tree" / root.strip("/")).is_dir():
                lines.append(f"cp -a {h}/tree/{root.strip('/')}/. {root}/")
        # Scripts systemd-shutdown would run on the way out are the host's business.
        lines.append("mount -t tmpfs -o ro,mode=0755 tmpfs /usr/lib/systemd/system-shutdown")
        for i, (ns_path, host) in enumerate(self._binds.items()):
            target = q(ns_path)
            if _writable_root(ns_path) is not None and host.is_dir():
                lines.append(f"mkdir -p {target}")
            elif _writable_root(ns_path) is not None:
                lines.append(f"mkdir -p {q(os.path.dirname(ns_path))}; touch {target}")
            lines.append(f"mount --move /run/harness-binds/{i} {target}")
        env = {
            **_NS_ENV,
            # container= puts systemd in container mode: no kmod loading, and
            # systemd-shutdown neither swaps off nor detaches the host's loop devices.
            "container": "edgeworker-harness",
            "SYSTEMD_UNIT_PATH": f"{NS_STAGING}/units",
            "SYSTEMD_GENERATOR_PATH": f"{NS_STAGING}/empty",
            "SYSTEMD_ENVIRONMENT_GENERATOR_PATH": f"{NS_STAGING}/empty",
            "SYSTEMD_PROC_CMDLINE": "",
        }
        # PID 1 only writes its log to a tty or journald; without journald it is dropped.
        log_target = "journal" if self._journald else "null"
        lines.append(
            "exec env -i "
            + " ".join(f"{k}={q(v)}" for k, v in env.items())
            + f" {SYSTEMD} --system --unit={DEFAULT_TARGET} --log-target={log_target}"
            " --log-level=info --show-status=no"
        )
        return "\n".join(lines) + "\n"

    # -- talking to it -------------------------------------------------------------

    def run(
        self, *argv: str, check: bool = False, timeout: float = 15.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside all the namespaces (as root, minimal environment)."""
        return subprocess.run(
            ["nsenter", f"--target={self.pid}", "--all", "--wd=/", "--", *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            input=input,
            env=_NS_ENV,
            cwd="/",
        )

    def systemctl(
        self, *args: str, check: bool = False, timeout: float = 15.0
    ) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        args = [f"--property={p}" for p in props]
        out = self.systemctl("show", *args, unit, check=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def prop(self, unit: str, name: str) -> str:
        return self.show(unit, name).get(name, "")

    def main_pid(self, unit: str) -> int:
        """The unit's main PID as seen inside the namespace (0 when none)."""
        return int(self.prop(unit, "MainPID") or 0)

    def host_pid(self, ns_pid: int) -> int:
        """Translate a PID of the namespace into the host's numbering."""
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("NSpid:"):
                    pids = line.split()[1:]
                    if len(pids) >= 2 and int(pids[-1]) == ns_pid and self._in_our_ns(status):
                        return int(pids[0])
        raise ProcessLookupError(ns_pid)

    def _in_our_ns(self, status: Path) -> bool:
        try:
            return os.readlink(status.parent / "ns/pid") == os.readlink(f"/proc/{self.pid}/ns/pid")
        except OSError:
            return False

    def wait_for(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        """Poll predicate until it returns something truthy; TimeoutError after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.05)

    def wait_for_state(self, unit: str, state: str = "active", timeout: float = 10.0) -> None:
        """Wait until the unit's ActiveState is `state`; on timeout, fail with its status."""
        try:
            self.wait_for(
                lambda: self.prop(unit, "ActiveState") == state, timeout, f"{unit} {state}"
            )
        except TimeoutError as exc:
            status = self.systemctl("status", unit).stdout
            raise TimeoutError(f"{exc}\n{status}\n{self.journal(unit)}") from None

    def journal(self, unit: str | None = None) -> str:
        """The unit's log lines (message text only), or the whole journal."""
        args = ["journalctl", "--no-pager", "--quiet", "-o", "cat"]
        if unit is not None:
            args += ["-u", unit]
        return self.run(*args).stdout

    def path(self, ns_path: str) -> Path:
        """A host path through which a file of the namespace can be read or written."""
        return Path(f"/proc/{self.pid}/root") / ns_path.lstrip("/")

    def _diagnostics(self) -> str:
        if self.staging is None:
            return ""
        boot = (self.staging / "boot.log").read_text(errors="replace")
        alive = self.pid and self._proc is not None and self._proc.poll() is None
        journal = self.journal()[-4000:] if alive else ""
        return f"--- boot.sh output ---\n{boot}--- journal ---\n{journal}"


def _writable_root(ns_path: str) -> str | None:
    path = os.path.normpath(ns_path)
    for root in OVERLAY_ROOTS + TMPFS_ROOTS:
        if path == root or path.startswith(root + "/"):
            return root
    return None

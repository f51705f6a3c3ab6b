"""Which files may decide what the worker runs: StrictModes, as sshd and cron check them.

The worker runs its jobs with its own rights. A file that another user can change — the config,
a `python_path` directory, a callable's module, a command's executable — hands those rights to
that user, so `check-config`, `run` and a reload refuse (one line: the file, its owner and mode,
and the fix) any such file that is

- owned by someone other than root or the user running the worker, or
- writable by its group or by others;

and the same for every directory above it, up to `/`, as sshd checks the path to
authorized_keys. A directory above that others may write passes with the sticky bit (`/tmp`):
there, nobody can rename or delete another user's entries. A directory that is itself trusted
(a `python_path` entry, a package) gets no such pass: a new file in it is new code.
Group-writable is refused whatever the group, as upstream sshd does: who is in a group changes
without the worker knowing.

A `python_path` entry or a job's `cwd` that does not exist is refused too: whoever creates it
first owns it. An `env_file` holds secrets, so it must not be readable by others either (mode
0600 or 0640 at most).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import stat

from edgeworker.config import Config, JobSpec, normal_path
from edgeworker.errors import ConfigError

SECRET_MODE_ALLOWED = 0o640  # an env_file: owner read/write, group read, nothing more


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _writers(st: os.stat_result) -> str | None:
    """Who besides the owner may write it, in words (None: nobody)."""
    return {0o022: "its group and others", 0o020: "its group", 0o002: "others"}.get(
        st.st_mode & 0o022)


class Checker:
    """Checks files against one user (default: the one running this process); remembers the
    directories it already found safe."""

    def __init__(self, uid: int | None = None):
        self.uid = os.geteuid() if uid is None else uid
        self.safe_dirs: set[str] = set()

    def _owner_ok(self, st: os.stat_result) -> bool:
        return st.st_uid in (0, self.uid)

    def _describe(self, st: os.stat_result) -> str:
        return f"owner {_user(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o}"

    def _bad_owner(self, path: str, st: os.stat_result, what: str) -> str:
        return (f"{what} is owned by {_user(st.st_uid)}, not root or {_user(self.uid)} "
                f"(the user running the worker) ({self._describe(st)}); fix: chown "
                f"{_user(self.uid)} {path}")

    def _directories(self, path: str) -> None:
        directory = os.path.dirname(path)
        while directory not in self.safe_dirs:
            st = os.stat(directory)
            if not self._owner_ok(st):
                raise ConfigError(self._bad_owner(directory, st, f"directory {directory} "
                                                                 f"(above {path})"))
            who = _writers(st)
            if who and not st.st_mode & stat.S_ISVTX:
                raise ConfigError(
                    f"directory {directory} (above {path}) is writable by {who} without the "
                    f"sticky bit ({self._describe(st)}): they could replace what the "
                    f"worker runs; fix: chmod go-w {directory}")
            self.safe_dirs.add(directory)
            parent = os.path.dirname(directory)
            if parent == directory:
                break
            directory = parent

    def check(self, path: str | os.PathLike, what: str | None = None,
              allowed_mode: int | None = None) -> None:
        """Refuse `path` (a file or directory, symlinks resolved) if anyone but root and the
        worker's user could change it, or (with `allowed_mode`) if it has more bits than that."""
        real = os.path.realpath(path)
        label = what or str(path)
        if str(path) != real:
            label += f" (-> {real})"
        try:
            st = os.stat(real)
        except OSError as exc:
            raise ConfigError(f"{label}: cannot check it: {exc.strerror}") from None
        if not self._owner_ok(st):
            raise ConfigError(self._bad_owner(real, st, label))
        mode = stat.S_IMODE(st.st_mode)
        if allowed_mode is not None and mode & ~allowed_mode:
            raise ConfigError(
                f"{label} holds secrets but its mode is {mode:04o} (owner {_user(st.st_uid)}): "
                f"others could read or change it; fix: chmod {allowed_mode:o} {real}")
        who = _writers(st)
        if who:  # even sticky: a new module in a python_path directory is new code
            raise ConfigError(
                f"{label} is writable by {who} ({self._describe(st)}): they could make "
                f"the worker run their code; fix: chmod go-w {real}")
        if stat.S_ISDIR(st.st_mode):
            self.safe_dirs.add(real)
        self._directories(real)


HOOKS = ("on_failure", "on_success", "on_retry")


def verify(config: Config, checker: Checker | None = None) -> None:
    """Check every file the config makes the worker trust; raise ConfigError at the first."""
    checker = checker or Checker()
    if config.path is not None:
        checker.check(config.path, f"config file {config.path}")
    for entry in config.worker.python_path:
        if not os.path.isdir(entry):
            raise config.error(f"[worker] python_path: {entry} is not a directory "
                               "(missing: whoever creates it first decides what runs)",
                               "worker", 0, "python_path")
        checker.check(entry, f"python_path entry {entry}")
    if config.worker.env_file is not None:
        _check_env_file(config, checker, config.worker.env_file, "worker", 0)
    for key in HOOKS:
        try:
            _check_hook(getattr(config.worker, key), key, {}, checker)
        except ConfigError as exc:
            raise config.error(f"[worker] {exc}", "worker", 0, key) from None
    for index, spec in enumerate(config.jobs):
        try:
            verify_job(spec, config.worker.python_path, checker)
        except ConfigError as exc:
            raise config.error(f'job "{spec.name}": {exc}', "jobs", index,
                               _key_of(spec, str(exc))) from None


def _key_of(spec: JobSpec, message: str) -> str:
    for key in ("cwd", "env_file", *HOOKS):
        if message.startswith(f"{key}:"):
            return key
    return "callable" if spec.kind == "callable" else "command"


def _check_env_file(config: Config, checker: Checker, path: str, header: str,
                    index: int) -> None:
    try:
        check_env_file(path, checker)
    except ConfigError as exc:
        raise config.error(f"[worker] {exc}", header, index, "env_file") from None


def check_env_file(path: str | os.PathLike, checker: Checker | None = None) -> None:
    if not os.path.isfile(path):
        raise ConfigError(f"env_file: {path} is not a file")
    (checker or Checker()).check(path, f"env_file: {path}", SECRET_MODE_ALLOWED)


def verify_job(spec: JobSpec, python_path: tuple[str | os.PathLike, ...],
               checker: Checker | None = None) -> None:
    """The files one job runs: its executable (or the shell), its callable's module files, its
    cwd and env_file. Errors start with the key they are about."""
    checker = checker or Checker()
    if spec.cwd is not None and not os.path.isdir(spec.cwd):
        raise ConfigError(f"cwd: {spec.cwd} is not a directory")
    if spec.env_file is not None:
        check_env_file(spec.env_file, checker)
    if spec.kind == "command":
        executable = _executable(spec)
        if executable is not None:
            checker.check(executable, f"command: executable {executable}")
    else:
        for path in module_files(spec.target.partition(":")[0], python_path):
            checker.check(path, f"callable: {path}")
    for key in HOOKS:
        _check_hook(getattr(spec, key), key, dict(spec.env), checker)


def _check_hook(command: str | None, key: str, env: dict[str, str], checker: Checker) -> None:
    """A hook's program, found as the alerts thread finds it (a missing one is the hook's
    recorded failure, not a config error)."""
    if not command:
        return
    argv0 = shlex.split(command)[0]
    if "/" in argv0:
        found = argv0 if os.path.exists(argv0) else None
    else:
        found = shutil.which(argv0, path=env.get("PATH", os.environ.get("PATH", os.defpath)))
    if found is not None:
        checker.check(found, f"{key}: executable {found}")


def _executable(spec: JobSpec) -> str | None:
    """The program a command job starts (for `shell = true`, the shell), or None when it is not
    found (the run then fails with "command not found")."""
    if spec.shell:
        return "/bin/sh"
    argv0 = shlex.split(spec.target)[0]
    if "/" in argv0:
        path = os.path.join(spec.cwd or "", argv0)
        return path if os.path.exists(path) else None
    search = dict(spec.env).get("PATH", os.environ.get("PATH", os.defpath))
    return shutil.which(argv0, path=search)


def module_files(module: str, python_path: tuple[str | os.PathLike, ...]) -> list[str]:
    """The package directories and files Python would import `module` from, when it comes from
    a `python_path` entry (found without importing anything: an import runs code)."""
    parts = module.split(".")
    for entry in python_path:
        top = os.path.join(entry, parts[0])
        if not (os.path.isdir(top) or os.path.isfile(f"{top}.py")):
            continue
        found: list[str] = []
        directory = os.fspath(entry)
        for part in parts[:-1]:
            directory = os.path.join(directory, part)
            found.append(directory)
            if os.path.isfile(init := os.path.join(directory, "__init__.py")):
                found.append(init)
        last = os.path.join(directory, parts[-1])
        if os.path.isfile(init := os.path.join(last, "__init__.py")):
            found += [last, init]
        elif os.path.isfile(f"{last}.py"):
            found.append(f"{last}.py")
        return [normal_path(path) for path in found]  # as pathlib joins `.` and `x`: `x`
    return []

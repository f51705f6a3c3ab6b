"""Configuration: the TOML file (and `jobs add` options) turned into frozen dataclasses.

A file looks like::

    [worker]
    database = "/var/lib/edgeworker/edgeworker.db"
    workers = 2

    [[jobs]]
    name = "heartbeat"
    command = "curl -fsS https://example.net/ping"
    every = "30s"

Each key of a table is a field of its dataclass, declared with `setting(default, kind, ...)`:
what it takes and which values are allowed. One loader walks those declarations for every table;
the few rules that tie keys together (a job's target and its schedule) follow as small functions.
Every error names the file, the line (where it can be found), the job or key, and what is allowed:
typos must not pass silently, so unknown keys are errors too.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields

from edgeworker.durations import LONGEST, format_duration, parse_duration
from edgeworker.errors import ConfigError

TYPE_CHECKING = False  # typing is not imported at run time (load_config's forget_parser)
if TYPE_CHECKING:
    from typing import Any

_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TAG = _JOB_NAME  # a worker's tag, or one a job runs on
_WORKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_CALLABLE = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

# SQLite takes its busy timeout in milliseconds as a 32-bit int; Python turns more than ~24 days
# into 0 (no waiting at all) without a word.
LONGEST_BUSY_TIMEOUT = 86400.0
# A cron expression that matches no date in this many years never does (Feb 29 of a leap year
# is at most 8 years away, across a century year).
NEVER_YEARS = 8
CRON_HELP = '(minute hour day-of-month month day-of-week, e.g. "*/5 * * * *")'

DEFAULT_HEARTBEAT = 30.0  # [worker] heartbeat on PostgreSQL
DEFAULT_LEASE = 60.0  # [worker] lease

CATCH_UP_POLICIES = ("skip", "once", "all")
DURABILITY_LEVELS = ("full", "normal")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Rule:
    """What one key of the file takes. `kind` is one of the cases of `_value`."""

    kind: str
    low: float = 0  # int: the smallest; duration: the shortest
    high: float = LONGEST  # int: the largest; duration: the longest
    choices: tuple[Any, ...] = ()
    positive: bool = False  # a duration of 0 is refused
    words: tuple[tuple[Any, Any], ...] = ()  # values taken as they are: (("off", None),)
    hint: str = ""  # added to a bad value's message, e.g. ', or "off"'


def is_tag(text: str) -> bool:
    """Whether `text` can be a tag: a worker's name that can is one of its tags too."""
    return bool(_TAG.fullmatch(text))


def setting(default: Any = MISSING, kind: str = "", low: float = 0, high: float = LONGEST,
            **rule: Any) -> Any:
    """A dataclass field that is also a key of the file, checked by `Rule(kind, low, high, ...)`."""
    return field(default=default, metadata={"rule": Rule(kind, low, high, **rule)})


@dataclass(frozen=True)
class JobSpec:
    """One job as the user declared it (config file or `jobs add`)."""

    name: str = setting(kind="name")
    kind: str  # "command" | "callable": the key given
    target: str  # a command line (shlex unless shell) or "pkg.mod:func"
    shell: bool = setting(False, "bool")
    every: float | None = setting(None, "duration", 0.1)
    cron: str | None = setting(None, "cron")
    timezone: str | None = setting(None, "timezone")
    timeout: float | None = setting(None, "duration", positive=True)
    # 3, not 1: an attempt is counted when a run starts, so a run that a power cut interrupts
    # has used one; with a single attempt it could not run again.
    max_attempts: int = setting(3, "int", 1, 1000)
    retry_delay: float = setting(10.0, "duration")
    catch_up: str = setting("skip", "choice", choices=CATCH_UP_POLICIES)
    catch_up_limit: int = setting(10, "int", 1, 100_000)
    jitter: float = setting(0.0, "duration")
    enabled: bool = setting(True, "bool")
    env: tuple[tuple[str, str], ...] = setting((), "env")
    cwd: str | None = setting(None, "directory")
    env_file: str | None = setting(None, "path")  # KEY=VALUE lines read at each run (secrets)
    isolate: bool = setting(False, "bool")  # a callable in a child process, stopped at its timeout
    # Only workers carrying one of these tags ([worker] tags) run it; () any worker.
    run_on: tuple[str, ...] = setting((), "tags")
    # Alerts (edgeworker.alerts); None takes the [worker] default, "" turns it off for this job.
    on_failure: str | None = setting(None, "hook")  # a command line, run after a final failure
    on_success: str | None = setting(None, "hook")
    on_retry: str | None = setting(None, "hook")  # after a failed attempt that will be retried
    ping_url: str | None = setting(None, "url")  # healthchecks.io-style: /start, the URL, /fail
    # No success for this long: on_failure, status overdue. "off" (0) undoes the [worker] default.
    alert_after: float | None = setting(None, "duration", 1.0, words=(("off", 0.0),),
                                        hint=', or "off"')


@dataclass(frozen=True)
class WorkerSettings:
    """The [worker] table."""

    database: str | None = setting(None, "database")  # a file, or a postgresql:// URL
    # What the worker is called on its database (tasks.worker, the workers row, its lock);
    # None: the host name. Two workers on one PostgreSQL database need two names.
    name: str | None = setting(None, "worker_name")
    workers: int = setting(2, "int", 1, 64)
    tags: tuple[str, ...] = setting((), "tags")  # this worker runs jobs whose run_on has one
    durability: str = setting("full", "choice", choices=DURABILITY_LEVELS)
    busy_timeout: float = setting(5.0, "duration", high=LONGEST_BUSY_TIMEOUT, positive=True)
    shutdown_timeout: float = setting(30.0, "duration")
    retention: float | None = setting(7 * 86400.0, "duration", positive=True, words=(
        ("forever", None), ("off", None)), hint=', or "forever" to keep every task')
    # Every worker thread busy this long: say so.
    busy_alert: float | None = setting(3600.0, "duration", positive=True, words=(("off", None),),
                                       hint=', or "off"')
    python_path: tuple[str, ...] = setting((), "paths")
    log_format: str = setting("text", "choice", choices=LOG_FORMATS)
    log_level: str = setting("info", "choice", choices=LOG_LEVELS)
    # Cron jobs wait for a synchronised clock ("auto": when a time daemon runs), at most this long.
    wait_for_clock_sync: str = setting("auto", "choice", choices=("auto",), words=(
        (True, "yes"), (False, "no")), hint=", true or false")
    clock_sync_timeout: float = setting(600.0, "duration")
    env_file: str | None = setting(None, "path")  # for every job, under each job's own
    # Alerts: defaults for every job (a job's own value overrides), see edgeworker.alerts.
    on_failure: str | None = setting(None, "hook")
    on_success: str | None = setting(None, "hook")
    on_retry: str | None = setting(None, "hook")
    ping_url: str | None = setting(None, "url")
    alert_after: float | None = setting(None, "duration", 1.0, words=(("off", 0.0),),
                                        hint=', or "off"')
    hook_timeout: float = setting(30.0, "duration", positive=True)  # a hook is stopped after this
    # How often the worker writes its workers row's heartbeat; None: 30 s on PostgreSQL, off on
    # SQLite (one worker, behind a lock: an idle worker writes nothing), see heartbeat_seconds.
    heartbeat: float | None = setting(None, "duration", 1.0, 3600.0, words=(("off", 0.0),),
                                      hint=', or "off"')
    # PostgreSQL: a worker not heard from (by the server's clock) for this long has lost its
    # running tasks to the live workers, which recover them. Longer than the heartbeat.
    lease: float = setting(DEFAULT_LEASE, "duration", 2.0, 86400.0)

    def lease_seconds(self, on_server: bool) -> float | None:
        """The lease in effect: PostgreSQL's, with a heartbeat to renew it; else None."""
        return self.lease if self.heartbeat_seconds(on_server) and on_server else None

    def worker_name(self) -> str:
        """The name in effect: `name`, or the host name."""
        return self.name or default_worker_name()

    def heartbeat_seconds(self, on_server: bool) -> float | None:
        """The heartbeat interval in effect, or None for none."""
        if self.heartbeat is None:
            return DEFAULT_HEARTBEAT if on_server else None
        return self.heartbeat or None


@dataclass(frozen=True)
class MetricsSettings:
    """The [metrics] table (edgeworker.metrics)."""

    textfile: str | None = setting(None, "path")
    # How often the worker looks for changed values.
    interval: float = setting(15.0, "duration", 0.1, positive=True)


@dataclass(frozen=True)
class Config:
    path: str | None = None
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    jobs: tuple[JobSpec, ...] = ()
    where: _Where | None = field(default=None, compare=False, repr=False)

    def error(self, message: str, header: str | None = None, index: int = 0,
              key: str | None = None) -> ConfigError:
        """An error about this file's contents, found after parsing: `file:line: message`."""
        if self.where is None:
            return ConfigError(f"{self.path or 'config'}: {message}")
        return self.where.error(message, header, index, key)


def _rules(cls: type) -> dict[str, Rule]:
    """The keys of a table: its dataclass's `setting()` fields, in their order."""
    return {f.name: f.metadata["rule"] for f in fields(cls) if "rule" in f.metadata}


_SECTIONS = {"worker": WorkerSettings, "metrics": MetricsSettings}
_JOB_RULES = {**_rules(JobSpec), "command": Rule("command"), "callable": Rule("callable")}
_JOB_NEEDS = (  # keys a job must give exactly one of: (keys, key to blame, message)
    (("name",), "name", "missing; every job needs a unique name"),
    (("command", "callable"), None,
     "give exactly one of 'command' (a program to run) or 'callable' (package.module:function)"),
    (("every", "cron"), None,
     "give exactly one schedule: 'every' (e.g. \"30s\") or 'cron' (e.g. \"*/5 * * * *\")"),
)


class _Where:
    """Finds where a table or key is in the file's text, for `file:line: message` errors."""

    def __init__(self, path: str | None, text: str = ""):
        self.path = path
        # (table, its index among tables of that name, key or None for the header) -> line
        self.lines: dict[tuple[str, int, str | None], int] = {}
        table, seen = "", {"": 0}
        for number, line in enumerate(text.splitlines(), start=1):
            if header := re.match(r"\s*\[\[?\s*([^\]]*?)\s*\]", line):
                table, key = header.group(1), None
                seen[table] = seen.get(table, -1) + 1
            elif assignment := re.match(r"\s*([\w-]+)\s*=", line):
                key = assignment.group(1)
            else:
                continue
            self.lines.setdefault((table, seen[table], key), number)

    def error(self, message: str, header: str | None = None, index: int = 0,
              key: str | None = None) -> ConfigError:
        """`file:line: message`, at `key` in the index-th `[header]` table (or at the table), or
        at a top-level key or table `key` when no header is given."""
        lines = self.lines
        if header is not None:
            line = lines.get((header, index, key)) or lines.get((header, index, None))
        else:  # a top-level key, or the first [key] or [key.sub] table
            tables = (number for (table, _, k), number in lines.items()
                      if k is None and table.split(".")[0].strip() == key)
            line = lines.get(("", 0, key)) or next(tables, None)
        return ConfigError(f"{self.path or 'config'}{f':{line}' if line else ''}: {message}")


# What tomllib imports besides typing, kept: none of them holds typing.
PARSER_IMPORTS = {"datetime", "_datetime", "string", "_string", "math", "_typing"}


def load_config(path: str | os.PathLike | None, forget_parser: bool = False,
                home: str | None = None) -> Config:
    """Read and validate a config file; `None` gives the defaults (no file). `forget_parser`:
    a worker about to start gives back the TOML parser and `typing` (0.6 MiB), when the read
    imported nothing else that could hold them (a cron job's croniter and zoneinfo do). `home`:
    the directory a relative `path` is read from (the worker's at its start), where it is not
    the current one; the paths in the file are resolved as they were then."""
    if path is None:
        return Config()
    path = normal_path(os.fspath(path))
    try:
        with open(os.path.join(home or "", path), encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    loaded = set(sys.modules)
    config = parse_config(text, path)
    parser = {name for name in set(sys.modules) - loaded
              if name.partition(".")[0] in ("tomllib", "typing")}
    if forget_parser and set(sys.modules) - loaded - parser <= PARSER_IMPORTS:
        import gc

        for name in parser:
            del sys.modules[name]
        gc.collect()
    return config


def parse_config(text: str, path: str | os.PathLike | None = None) -> Config:
    import tomllib

    path = None if path is None else normal_path(os.fspath(path))
    where = _Where(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column \d+\)$", message)
        if match:
            message = message[: match.start()].strip()
            raise ConfigError(f"{path or 'config'}:{match.group(1)}: {message}") from None
        raise ConfigError(f"{path or 'config'}: {message}") from None

    for name in data:
        if name not in (*_SECTIONS, "jobs"):
            raise where.error(f"unknown table or key {name!r}; "
                              "allowed: [worker], [metrics], [[jobs]]", key=name)
    base = (os.path.dirname(path) or ".") if path else os.getcwd()
    sections = {name: _section(name, data.get(name, {}), where, base) for name in _SECTIONS}
    raw_jobs = data.get("jobs", [])
    if not isinstance(raw_jobs, list):
        raise where.error("'jobs' must be an array of tables: write each job as [[jobs]]")
    jobs = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_jobs):
        spec = _job_table(raw, where, index, base)
        if spec.name in seen:
            raise where.error(f'job "{spec.name}" is defined twice (jobs #{seen[spec.name] + 1} '
                              f"and #{index + 1}); job names must be unique", "jobs", index, "name")
        seen[spec.name] = index
        jobs.append(spec)
    return Config(path=path, **sections, jobs=tuple(jobs), where=where)


def _section(name: str, raw: Any, where: _Where, base: str) -> Any:
    if not isinstance(raw, dict):
        raise where.error(f"[{name}] must be a table")

    def fail(key: str, message: str) -> ConfigError:
        return where.error(f"[{name}] {key}: {message}", name, 0, key)

    values = _load(_rules(_SECTIONS[name]), raw, fail, base)
    if name == "worker":
        _lease(values, fail)
    return _SECTIONS[name](**values)


def _lease(values: dict[str, Any], fail) -> None:
    """The lease must outlast the heartbeat that renews it (PostgreSQL's default heartbeat
    where none is given)."""
    heartbeat = values.get("heartbeat")
    beat = DEFAULT_HEARTBEAT if heartbeat is None else heartbeat
    lease = values.get("lease", DEFAULT_LEASE)
    if beat and lease <= beat:
        key = "lease" if "lease" in values else "heartbeat"
        raise fail(key, f"the lease ({format_duration(lease)}) must be longer than the heartbeat "
                        f"({format_duration(beat)}) that renews it")


def _job_table(raw: Any, where: _Where, index: int, base: str) -> JobSpec:
    if not isinstance(raw, dict):
        raise where.error(f"jobs #{index + 1} must be a table ([[jobs]])", "jobs", index)
    name = raw.get("name")
    label = f'job "{name}"' if isinstance(name, str) else f"jobs #{index + 1}"

    def fail(key: str | None, message: str) -> ConfigError:
        prefix = f"{label}: {key}: " if key else f"{label}: "
        return where.error(prefix + message, "jobs", index, key)

    return build_job_spec(raw, fail, base)


def build_job_spec(raw: Mapping[str, Any], fail, base: str | None = None) -> JobSpec:
    """Validate one job's settings. `fail(key, message)` builds the error to raise; relative
    paths are taken from `base` (the config file's directory; default the current one)."""
    values = _load(_JOB_RULES, raw, fail, base or os.getcwd(), _JOB_NEEDS)
    _target(values, fail)
    _schedule(values, fail)
    return JobSpec(**values)


def _load(rules: Mapping[str, Rule], raw: Mapping[str, Any], fail, base: str,
          needs: tuple[tuple[tuple[str, ...], str | None, str], ...] = ()) -> dict[str, Any]:
    """The keys of one table, each checked by its rule. An unknown key is an error, and so is
    a group of `needs` (keys, key to blame, message) that is not given exactly once."""
    for name in raw:
        if name not in rules:
            raise fail(name, f"unknown key; allowed: {', '.join(sorted(rules))}")
    for keys, blame, message in needs:
        if sum(k in raw for k in keys) != 1:
            raise fail(blame, message)
    values = {}
    for name, rule in rules.items():
        if name in raw:
            try:
                values[name] = _value(rule, raw[name], base)
            except ValueError as exc:
                raise fail(name, f"{exc}{rule.hint}") from None
    return values


def _value(rule: Rule, value: Any, base: str) -> Any:
    """`value` checked (and converted) as `rule` says; a ValueError says what is wrong with it."""
    for word, meaning in rule.words:
        if type(value) is type(word) and value == word:
            return meaning
    match rule.kind:
        case "bool":
            if not isinstance(value, bool):
                raise ValueError("must be true or false")
        case "int":
            if isinstance(value, bool) or not isinstance(value, int) \
                    or not rule.low <= value <= rule.high:
                raise ValueError(f"{value!r} is not a whole number from {rule.low} to {rule.high}")
        case "choice":
            if value not in rule.choices:
                raise ValueError(f"{value!r} is not one of: {', '.join(rule.choices)}")
        case "duration":
            seconds = parse_duration(value)
            if not seconds <= rule.high:
                raise ValueError(f"{value!r} is longer than {format_duration(rule.high)}, "
                                 "the most allowed")
            if rule.positive and seconds <= 0:
                raise ValueError("must be more than 0")
            if seconds < rule.low:
                raise ValueError(f"must be at least {format_duration(rule.low)}")
            return seconds
        case "path":
            return _path(value, base)
        case "database":
            if isinstance(value, str) and value.startswith(("postgresql://", "postgres://")):
                from edgeworker.errors import DatabaseError
                from edgeworker.postgres import check_url

                try:
                    return check_url(value)
                except DatabaseError as exc:
                    raise ValueError(str(exc)) from None
            return _path(value, base)
        case "paths":
            entries = [value] if isinstance(value, str) else value
            if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
                raise ValueError("must be a directory or a list of directories")
            return tuple(_path(entry, base) for entry in entries)
        case "tags":
            entries = [value] if isinstance(value, str) else value
            if not isinstance(entries, list) or not entries \
                    or not all(isinstance(e, str) for e in entries):
                raise ValueError('must be a tag or a list of tags, e.g. ["site-a"]')
            for entry in entries:
                if not _TAG.fullmatch(entry):
                    raise ValueError(f"{entry!r} is not a valid tag (letters, digits, '_', '.', "
                                     "'-'; at most 64 characters, starting with a letter or digit)")
            return tuple(sorted(set(entries)))
        case "directory":
            if not isinstance(value, str) or not value:
                raise ValueError("must be a directory path")
        case "env":
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise ValueError('must be a table of strings, e.g. env = { LANG = "C" }')
            return tuple(sorted(value.items()))
        case "worker_name":
            check_worker_name(value)
        case "name":
            if not isinstance(value, str) or not _JOB_NAME.fullmatch(value):
                raise ValueError(f"{value!r} is not a valid job name (letters, digits, '_', '.', "
                                 "'-'; at most 64 characters, starting with a letter or digit)")
        case "command":
            if isinstance(value, str) and not value.strip():
                raise ValueError("is empty")
            if not isinstance(value, str) and not _strings(value):
                raise ValueError("must be a string or a non-empty list of strings")
        case "callable":
            if not isinstance(value, str) or not _CALLABLE.fullmatch(value):
                raise ValueError(f"{value!r} is not of the form package.module:function")
        case "hook":  # one shlex line; "" turns a [worker] default off
            if _strings(value):
                return shlex.join(value)
            if not isinstance(value, str):
                raise ValueError("must be a command: a string or a non-empty list of strings")
            _split(value)
        case "url":
            return _url(value)
        case "cron":
            _cron(value)
        case "timezone":
            _timezone(value)
        case _:
            raise AssertionError(f"no kind {rule.kind!r}")
    return value


def default_worker_name() -> str:
    """The host name, as far as it makes a valid worker name."""
    import socket

    host = re.sub(r"[^A-Za-z0-9_.@-]", "-", socket.gethostname())[:64].lstrip("_.@-")
    return host or "worker"


def check_worker_name(value: Any) -> str:
    """A ValueError unless `value` is a valid worker name."""
    if not isinstance(value, str) or not _WORKER_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid worker name (letters, digits, '_', '.', '@', "
                         "'-'; at most 64 characters, starting with a letter or digit)")
    return value


def _target(values: dict[str, Any], fail) -> None:
    """A job's kind and target from its command or callable; shell and isolate only where they
    apply."""
    command, target = values.pop("command", None), values.pop("callable", None)
    shell = values.get("shell", False)
    if target is not None:
        if shell:
            raise fail("shell", "only applies to 'command' jobs")
        values.update(kind="callable", target=target)
        return
    if isinstance(command, list):
        if shell:
            raise fail("shell", "shell = true needs 'command' as one string, not a list")
        command = shlex.join(command)
    elif not shell:
        try:
            _split(command)
        except ValueError as exc:
            raise fail("command", str(exc)) from None
    if values.get("isolate"):
        raise fail("isolate", "only applies to 'callable' jobs (a command runs in its own "
                              "process already)")
    values.update(kind="command", target=command)


def _schedule(values: dict[str, Any], fail) -> None:
    """A time zone only for cron; a jitter as long as the period could start a run after its
    next slot, so it is refused."""
    every, cron, jitter = values.get("every"), values.get("cron"), values.get("jitter")
    if every is not None and "timezone" in values:
        raise fail("timezone", "only applies to 'cron' schedules")
    if jitter and every is not None and jitter >= every:
        raise fail("jitter", f"{format_duration(jitter)} is not shorter than the period "
                             f"(every = {format_duration(every)})")
    if jitter and cron is not None and (gap := _cron_gap_at_most(cron, jitter)) is not None:
        raise fail("jitter", f"{format_duration(jitter)} is not shorter than the shortest gap "
                             f"between two runs of \"{cron}\" ({format_duration(gap)})")


def _cron_gap_at_most(expression: str, limit: float, slots: int = 1000) -> float | None:
    """A gap between consecutive slots of `expression` of at most `limit` seconds, looked for
    over a year of slots (at most `slots` of them: a denser expression repeats within them)."""
    from datetime import UTC, datetime, timedelta

    from croniter import croniter

    itr = croniter(expression, datetime(2001, 1, 1, tzinfo=UTC))
    previous = itr.get_next(datetime)
    end = previous + timedelta(days=366)
    for _ in range(slots):
        slot = itr.get_next(datetime)
        gap = (slot - previous).total_seconds()
        if gap <= limit:
            return gap
        if slot > end:
            break
        previous = slot
    return None


def _strings(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(a, str) for a in value)


def _split(command: str) -> None:
    try:
        shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"cannot split {command!r} into arguments: {exc}") from None


def _path(value: Any, base: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a path (a string)")
    return normal_path(os.path.join(base, os.path.expanduser(value)))  # an absolute one as is


def normal_path(path: str) -> str:
    """`path` written as pathlib writes it: no `.` parts, no repeated or trailing slashes (`..`
    is kept: it may follow a symlink). The worker does not import pathlib (0.6 MiB)."""
    slashes = len(path) - len(path.lstrip("/"))
    root = "//" if slashes == 2 else "/" * min(slashes, 1)
    return root + "/".join(part for part in path.split("/") if part not in ("", ".")) or "."


def _url(value: Any) -> str:
    from urllib.parse import urlsplit

    if value == "":
        return value
    if not isinstance(value, str):
        raise ValueError("must be an http:// or https:// URL (a string)")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
    if any(c.isspace() for c in value):
        raise ValueError(f"{value!r} contains white space")
    return value.rstrip("/")


def _cron(value: Any) -> None:
    from datetime import UTC, datetime

    from croniter import CroniterBadDateError, croniter  # here: `--help` must stay fast

    if not isinstance(value, str) or len(value.split()) != 5:
        raise ValueError(f"{value!r} is not a 5-field cron expression {CRON_HELP}")
    if not croniter.is_valid(value):
        raise ValueError(f"{value!r} is not a valid cron expression {CRON_HELP}")
    try:
        croniter(value, datetime(2001, 1, 1, tzinfo=UTC),
                 max_years_between_matches=NEVER_YEARS).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f"{value!r} never fires: no date matches it (within {NEVER_YEARS} "
                         "years)") from None


def _timezone(value: Any) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(value, str) or not value:
        raise ValueError("must be an IANA time zone name such as \"Europe/Berlin\" or \"UTC\"")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not a known time zone (IANA names such as "
                         "\"Europe/Berlin\" or \"UTC\")") from None

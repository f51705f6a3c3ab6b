"""Configuration: the TOML file (and `jobs add` options) turned into frozen dataclasses.

A file looks like::

    [worker]
    database = "/var/lib/edgeworker/edgeworker.db"
    workers = 2

    [[jobs]]
    name = "heartbeat"
    command = "curl -fsS https://example.net/ping"
    every = "30s"

Every error names the file, the line (where it can be found), the job or key, and what is allowed:
typos must not pass silently, so unknown keys are errors too.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeworker.durations import LONGEST, format_duration, parse_duration
from edgeworker.errors import ConfigError

_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CALLABLE = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

# SQLite takes its busy timeout in milliseconds as a 32-bit int; Python turns more than ~24 days
# into 0 (no waiting at all) without a word.
LONGEST_BUSY_TIMEOUT = 86400.0
# A cron expression that matches no date in this many years never does (Feb 29 of a leap year
# is at most 8 years away, across a century year).
NEVER_YEARS = 8
CRON_HELP = '(minute hour day-of-month month day-of-week, e.g. "*/5 * * * *")'

CATCH_UP_POLICIES = ("skip", "once", "all")
DURABILITY_LEVELS = ("full", "normal")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class JobSpec:
    """One job as the user declared it (config file or `jobs add`)."""

    name: str
    kind: str  # "command" | "callable"
    target: str  # a command line (split with shlex unless shell) or "package.module:function"
    shell: bool = False
    every: float | None = None
    cron: str | None = None
    timezone: str | None = None
    timeout: float | None = None
    # 3, not 1: an attempt is counted when a run starts, so a run that a power cut interrupts
    # has used one; with a single attempt it could not run again.
    max_attempts: int = 3
    retry_delay: float = 10.0
    catch_up: str = "skip"
    catch_up_limit: int = 10
    jitter: float = 0.0
    enabled: bool = True
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    env_file: Path | None = None  # KEY=VALUE lines read at each run (secrets stay out of here)
    isolate: bool = False  # a callable in a child process, stoppable at its timeout
    # Alerts (edgeworker.alerts); None takes the [worker] default, "" turns it off for this job.
    on_failure: str | None = None  # a command line (shlex), run after a run's final failure
    on_success: str | None = None
    on_retry: str | None = None  # after a failed attempt that will be retried
    ping_url: str | None = None  # healthchecks.io-style: /start, the URL itself, /fail
    alert_after: float | None = None  # no success for this long: on_failure, status overdue


@dataclass(frozen=True)
class WorkerSettings:
    database: Path | None = None
    workers: int = 2
    durability: str = "full"
    busy_timeout: float = 5.0
    shutdown_timeout: float = 30.0
    retention: float | None = 7 * 86400.0
    busy_alert: float | None = 3600.0  # every worker thread busy this long: say so
    python_path: tuple[Path, ...] = ()
    log_format: str = "text"
    log_level: str = "info"
    # Cron jobs wait for a synchronised clock ("auto": when a time daemon runs), at most this long.
    wait_for_clock_sync: str = "auto"
    clock_sync_timeout: float = 600.0
    env_file: Path | None = None  # for every job, under each job's own
    # Alerts: defaults for every job (a job's own value overrides), see edgeworker.alerts.
    on_failure: str | None = None
    on_success: str | None = None
    on_retry: str | None = None
    ping_url: str | None = None
    alert_after: float | None = None
    hook_timeout: float = 30.0  # a hook command is stopped after this long


@dataclass(frozen=True)
class MetricsSettings:
    textfile: Path | None = None
    interval: float = 15.0  # how often the worker looks for changed values


@dataclass(frozen=True)
class Config:
    path: Path | None = None
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


_TOP_KEYS = {"worker", "metrics", "jobs"}
_WORKER_KEYS = {f for f in WorkerSettings.__dataclass_fields__}
_METRICS_KEYS = {"textfile", "interval"}
_ALERT_KEYS = ("on_failure", "on_success", "on_retry", "ping_url", "alert_after")
_JOB_KEYS = {
    "name", "command", "callable", "shell", "every", "cron", "timezone", "timeout",
    "max_attempts", "retry_delay", "catch_up", "catch_up_limit", "jitter", "enabled", "env", "cwd",
    "env_file",
    "isolate",
    *_ALERT_KEYS,
}


class _Where:
    """Builds `file:line: table: key` prefixes for error messages."""

    def __init__(self, path: Path | None, text: str = ""):
        self.path = path
        self.lines = text.splitlines()

    def _line_of(self, header: str, index: int, key: str | None) -> int | None:
        """Line number of `key = ` inside the index-th `[header]`/`[[header]]` table."""
        seen, in_table = -1, False
        header_re = re.compile(r"\s*\[\[?\s*" + re.escape(header) + r"\s*\]\]?\s*(#.*)?$")
        for number, line in enumerate(self.lines, start=1):
            if header_re.match(line):
                seen += 1
                in_table = seen == index
                if in_table and key is None:
                    return number
                continue
            if line.lstrip().startswith("["):
                if in_table:
                    return None
                continue
            if in_table and key and re.match(r"\s*" + re.escape(key) + r"\s*=", line):
                return number
        return None

    def top_line(self, key: str) -> int | None:
        """Line number of a top-level `key = ` or of a `[key]`/`[[key]]`/`[key.sub]` header."""
        header_re = re.compile(r"\s*\[\[?\s*" + re.escape(key) + r"\s*[\].]")
        in_table = False
        for number, line in enumerate(self.lines, start=1):
            if header_re.match(line):
                return number
            if line.lstrip().startswith("["):
                in_table = True
            elif not in_table and re.match(r"\s*" + re.escape(key) + r"\s*=", line):
                return number
        return None

    def error(self, message: str, header: str | None = None, index: int = 0,
              key: str | None = None) -> ConfigError:
        where = str(self.path) if self.path else "config"
        line = self._line_of(header, index, key) if header else None
        if header is None and key is not None:
            line = self.top_line(key)
        if line is None and header and key:
            line = self._line_of(header, index, None)
        if line is not None:
            where += f":{line}"
        return ConfigError(f"{where}: {message}")


def load_config(path: Path | None) -> Config:
    """Read and validate a config file; `None` gives the defaults (no file)."""
    if path is None:
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    return parse_config(text, path)


def parse_config(text: str, path: Path | None = None) -> Config:
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

    for key in data:
        if key not in _TOP_KEYS:
            raise where.error(f"unknown table or key {key!r}; "
                              "allowed: [worker], [metrics], [[jobs]]", key=key)
    base = path.parent if path else Path.cwd()
    worker = _parse_worker(data.get("worker", {}), where, base)
    metrics = _parse_metrics(data.get("metrics", {}), where, base)
    raw_jobs = data.get("jobs", [])
    if not isinstance(raw_jobs, list):
        raise where.error("'jobs' must be an array of tables: write each job as [[jobs]]")
    jobs = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_jobs):
        spec = _parse_job_table(raw, where, index, base)
        if spec.name in seen:
            raise where.error(f'job "{spec.name}" is defined twice (jobs #{seen[spec.name] + 1} '
                              f"and #{index + 1}); job names must be unique", "jobs", index, "name")
        seen[spec.name] = index
        jobs.append(spec)
    return Config(path=path, worker=worker, metrics=metrics, jobs=tuple(jobs), where=where)


def _table(raw: Any, name: str, where: _Where) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise where.error(f"[{name}] must be a table")
    return raw


def _parse_worker(raw: Any, where: _Where, base: Path) -> WorkerSettings:
    raw = _table(raw, "worker", where)

    def fail(key: str, message: str) -> ConfigError:
        return where.error(f"[worker] {key}: {message}", "worker", 0, key)

    for key in raw:
        if key not in _WORKER_KEYS:
            raise fail(key, f"unknown key; allowed: {', '.join(sorted(_WORKER_KEYS))}")
    values: dict[str, Any] = {}
    if "database" in raw:
        values["database"] = _path(raw["database"], base, lambda m: fail("database", m))
    if "workers" in raw:
        values["workers"] = _int(raw["workers"], 1, 64, lambda m: fail("workers", m))
    if "durability" in raw:
        values["durability"] = _choice(raw["durability"], DURABILITY_LEVELS,
                                       lambda m: fail("durability", m))
    if "busy_timeout" in raw:
        values["busy_timeout"] = _duration(raw["busy_timeout"], lambda m: fail("busy_timeout", m),
                                           positive=True, longest=LONGEST_BUSY_TIMEOUT)
    if "shutdown_timeout" in raw:
        values["shutdown_timeout"] = _duration(raw["shutdown_timeout"],
                                               lambda m: fail("shutdown_timeout", m))
    if "retention" in raw:
        if raw["retention"] in ("forever", "off"):
            values["retention"] = None
        else:
            values["retention"] = _duration(raw["retention"], lambda m: fail(
                "retention", m + ', or "forever" to keep every task'), positive=True)
    if "busy_alert" in raw:
        if raw["busy_alert"] == "off":
            values["busy_alert"] = None
        else:
            values["busy_alert"] = _duration(raw["busy_alert"], lambda m: fail(
                "busy_alert", m + ', or "off"'), positive=True)
    if "python_path" in raw:
        entries = raw["python_path"]
        if isinstance(entries, str):
            entries = [entries]
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise fail("python_path", "must be a directory or a list of directories")
        values["python_path"] = tuple(
            _path(e, base, lambda m: fail("python_path", m)) for e in entries)
    if "env_file" in raw:
        values["env_file"] = _path(raw["env_file"], base, lambda m: fail("env_file", m))
    if "log_format" in raw:
        values["log_format"] = _choice(raw["log_format"], LOG_FORMATS,
                                       lambda m: fail("log_format", m))
    if "log_level" in raw:
        values["log_level"] = _choice(raw["log_level"], ("debug", "info", "warning", "error"),
                                      lambda m: fail("log_level", m))
    if "wait_for_clock_sync" in raw:
        value = raw["wait_for_clock_sync"]
        values["wait_for_clock_sync"] = (
            {True: "yes", False: "no"}[value] if isinstance(value, bool)
            else _choice(value, ("auto",), lambda m: fail(
                "wait_for_clock_sync", m.rstrip() + ", true or false")))
    if "clock_sync_timeout" in raw:
        values["clock_sync_timeout"] = _duration(raw["clock_sync_timeout"],
                                                 lambda m: fail("clock_sync_timeout", m))
    if "hook_timeout" in raw:
        values["hook_timeout"] = _duration(raw["hook_timeout"],
                                           lambda m: fail("hook_timeout", m), positive=True)
    _alerts(raw, values, fail)
    return WorkerSettings(**values)


def _parse_metrics(raw: Any, where: _Where, base: Path) -> MetricsSettings:
    raw = _table(raw, "metrics", where)
    for key in raw:
        if key not in _METRICS_KEYS:
            raise where.error(f"[metrics] {key}: unknown key; allowed: interval, textfile",
                              "metrics", 0, key)

    def fail(key: str, message: str) -> ConfigError:
        return where.error(f"[metrics] {key}: {message}", "metrics", 0, key)

    values: dict[str, Any] = {}
    if "interval" in raw:
        values["interval"] = _duration(raw["interval"], lambda m: fail("interval", m),
                                       positive=True)
        if values["interval"] < 0.1:
            raise fail("interval", "must be at least 100ms")
    if "textfile" in raw:
        values["textfile"] = _path(raw["textfile"], base, lambda m: fail("textfile", m))
    return MetricsSettings(**values)


def _parse_job_table(raw: Any, where: _Where, index: int, base: Path) -> JobSpec:
    if not isinstance(raw, dict):
        raise where.error(f"jobs #{index + 1} must be a table ([[jobs]])", "jobs", index)
    name = raw.get("name")
    label = f'job "{name}"' if isinstance(name, str) else f"jobs #{index + 1}"

    def fail(key: str | None, message: str) -> ConfigError:
        prefix = f"{label}: {key}: " if key else f"{label}: "
        return where.error(prefix + message, "jobs", index, key)

    return build_job_spec(raw, fail, base)


def build_job_spec(raw: Mapping[str, Any], fail, base: Path | None = None) -> JobSpec:
    """Validate one job's settings. `fail(key, message)` builds the error to raise; relative
    paths are taken from `base` (the config file's directory; default the current one)."""
    for key in raw:
        if key not in _JOB_KEYS:
            raise fail(key, f"unknown key; allowed: {', '.join(sorted(_JOB_KEYS))}")
    name = raw.get("name")
    if name is None:
        raise fail("name", "missing; every job needs a unique name")
    if not isinstance(name, str) or not _JOB_NAME.fullmatch(name):
        raise fail("name", f"{name!r} is not a valid job name (letters, digits, '_', '.', '-'; "
                           "at most 64 characters, starting with a letter or digit)")

    values: dict[str, Any] = {"name": name}
    has_command, has_callable = "command" in raw, "callable" in raw
    if has_command == has_callable:
        raise fail(None, "give exactly one of 'command' (a program to run) or "
                         "'callable' (package.module:function)")
    shell = raw.get("shell", False)
    if not isinstance(shell, bool):
        raise fail("shell", "must be true or false")
    if has_command:
        command = raw["command"]
        values["kind"] = "command"
        values["shell"] = shell
        if isinstance(command, str):
            if not command.strip():
                raise fail("command", "is empty")
            if not shell:
                try:
                    shlex.split(command)
                except ValueError as exc:
                    raise fail("command", f"cannot split {command!r} into arguments: {exc}") \
                        from None
            values["target"] = command
        elif isinstance(command, list) and command and all(isinstance(a, str) for a in command):
            if shell:
                raise fail("shell", "shell = true needs 'command' as one string, not a list")
            values["target"] = shlex.join(command)
        else:
            raise fail("command", "must be a string or a non-empty list of strings")
    else:
        target = raw["callable"]
        if shell:
            raise fail("shell", "only applies to 'command' jobs")
        if not isinstance(target, str) or not _CALLABLE.fullmatch(target):
            raise fail("callable", f"{target!r} is not of the form package.module:function")
        values["kind"] = "callable"
        values["target"] = target
    isolate = raw.get("isolate", False)
    if not isinstance(isolate, bool):
        raise fail("isolate", "must be true or false")
    if isolate and has_command:
        raise fail("isolate", "only applies to 'callable' jobs (a command runs in its own "
                              "process already)")
    values["isolate"] = isolate

    has_every, has_cron = "every" in raw, "cron" in raw
    if has_every == has_cron:
        raise fail(None, "give exactly one schedule: 'every' (e.g. \"30s\") or "
                         "'cron' (e.g. \"*/5 * * * *\")")
    if has_every:
        values["every"] = _duration(raw["every"], lambda m: fail("every", m), shortest=0.1)
    else:
        values["cron"] = _cron(raw["cron"], lambda m: fail("cron", m))
    if "timezone" in raw:
        if has_every:
            raise fail("timezone", "only applies to 'cron' schedules")
        values["timezone"] = _timezone(raw["timezone"], lambda m: fail("timezone", m))
    if "timeout" in raw:
        values["timeout"] = _duration(raw["timeout"], lambda m: fail("timeout", m),
                                      positive=True)
    if "max_attempts" in raw:
        values["max_attempts"] = _int(raw["max_attempts"], 1, 1000,
                                      lambda m: fail("max_attempts", m))
    if "retry_delay" in raw:
        values["retry_delay"] = _duration(raw["retry_delay"], lambda m: fail("retry_delay", m))
    if "catch_up" in raw:
        values["catch_up"] = _choice(raw["catch_up"], CATCH_UP_POLICIES,
                                     lambda m: fail("catch_up", m))
    if "catch_up_limit" in raw:
        values["catch_up_limit"] = _int(raw["catch_up_limit"], 1, 100_000,
                                        lambda m: fail("catch_up_limit", m))
    if "jitter" in raw:
        values["jitter"] = _duration(raw["jitter"], lambda m: fail("jitter", m))
        _check_jitter(values, lambda m: fail("jitter", m))
    if "enabled" in raw:
        if not isinstance(raw["enabled"], bool):
            raise fail("enabled", "must be true or false")
        values["enabled"] = raw["enabled"]
    if "env" in raw:
        env = raw["env"]
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise fail("env", 'must be a table of strings, e.g. env = { LANG = "C" }')
        values["env"] = tuple(sorted(env.items()))
    if "cwd" in raw:
        if not isinstance(raw["cwd"], str) or not raw["cwd"]:
            raise fail("cwd", "must be a directory path")
        values["cwd"] = raw["cwd"]
    if "env_file" in raw:
        values["env_file"] = _path(raw["env_file"], base or Path.cwd(),
                                   lambda m: fail("env_file", m))
    _alerts(raw, values, fail)
    return JobSpec(**values)


def _alerts(raw: Mapping[str, Any], values: dict[str, Any], fail) -> None:
    """The alert keys a job and [worker] share: hooks, ping_url, alert_after."""
    for key in ("on_failure", "on_success", "on_retry"):
        if key in raw:
            values[key] = _hook(raw[key], lambda m, key=key: fail(key, m))
    if "ping_url" in raw:
        values["ping_url"] = _url(raw["ping_url"], lambda m: fail("ping_url", m))
    if raw.get("alert_after") == "off":
        values["alert_after"] = 0.0  # a job's way out of the [worker] default
    elif "alert_after" in raw:
        values["alert_after"] = _duration(raw["alert_after"], lambda m: fail(
            "alert_after", m + ', or "off"'), shortest=1.0)


def _hook(value: Any, fail) -> str:
    """A hook command as one shlex line ("" turns a [worker] default off)."""
    if isinstance(value, list) and value and all(isinstance(a, str) for a in value):
        return shlex.join(value)
    if not isinstance(value, str):
        raise fail("must be a command: a string or a non-empty list of strings")
    try:
        shlex.split(value)
    except ValueError as exc:
        raise fail(f"cannot split {value!r} into arguments: {exc}") from None
    return value


def _url(value: Any, fail) -> str:
    from urllib.parse import urlsplit

    if value == "":
        return value
    if not isinstance(value, str):
        raise fail("must be an http:// or https:// URL (a string)")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise fail(f"{value!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail(f"{value!r} is not an http:// or https:// URL with a host")
    if any(c.isspace() for c in value):
        raise fail(f"{value!r} contains white space")
    return value.rstrip("/")


def _duration(value: Any, fail, *, positive: bool = False, shortest: float = 0.0,
              longest: float = LONGEST) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if not seconds <= longest:
        raise fail(f"{value!r} is longer than {format_duration(longest)}, the most allowed")
    if seconds < shortest:
        raise fail(f"must be at least {format_duration(shortest)}")
    if positive and seconds <= 0:
        raise fail("must be more than 0")
    return seconds


def _check_jitter(values: dict[str, Any], fail) -> None:
    """A jitter as long as the period could start a run after its next slot: refused."""
    jitter = values["jitter"]
    if not jitter:
        return
    if values.get("every") is not None:
        if jitter >= values["every"]:
            raise fail(f"{format_duration(jitter)} is not shorter than the period "
                       f"(every = {format_duration(values['every'])})")
        return
    gap = _cron_gap_at_most(values["cron"], jitter)
    if gap is not None:
        raise fail(f"{format_duration(jitter)} is not shorter than the shortest gap between two "
                   f"runs of \"{values['cron']}\" ({format_duration(gap)})")


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


def _int(value: Any, low: int, high: int, fail) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise fail(f"{value!r} is not a whole number from {low} to {high}")
    return value


def _choice(value: Any, allowed: tuple[str, ...], fail) -> str:
    if value not in allowed:
        raise fail(f"{value!r} is not one of: {', '.join(allowed)}")
    return value


def _path(value: Any, base: Path, fail) -> Path:
    if not isinstance(value, str) or not value:
        raise fail("must be a path (a string)")
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def _cron(value: Any, fail) -> str:
    from datetime import UTC, datetime

    from croniter import CroniterBadDateError, croniter  # here: `--help` must stay fast

    if not isinstance(value, str) or len(value.split()) != 5:
        raise fail(f"{value!r} is not a 5-field cron expression {CRON_HELP}")
    if not croniter.is_valid(value):
        raise fail(f"{value!r} is not a valid cron expression {CRON_HELP}")
    try:
        croniter(value, datetime(2001, 1, 1, tzinfo=UTC),
                 max_years_between_matches=NEVER_YEARS).get_next(datetime)
    except CroniterBadDateError:
        raise fail(f"{value!r} never fires: no date matches it (within {NEVER_YEARS} years)") \
            from None
    return value


def _timezone(value: Any, fail) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(value, str) or not value:
        raise fail("must be an IANA time zone name such as \"Europe/Berlin\" or \"UTC\"")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise fail(f"{value!r} is not a known time zone (IANA names such as \"Europe/Berlin\" "
                   "or \"UTC\")") from None
    return value

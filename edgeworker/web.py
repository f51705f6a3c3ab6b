"""`edgeworker serve`: a read-only status page, on the standard library's HTTP server.

Pages: `/` (overview), `/jobs`, `/jobs/NAME` (its runs, `?before=ID` pages back), `/runs/ID` and
`/failures`; each also as JSON with `?format=json`, in the shapes of the CLI's `--json`. The data
comes from edgeworker.report's views; this module only routes, renders and guards.

Each request opens the database read-only (edgeworker.db.ReadOnlyDatabase; on PostgreSQL, a
connection whose transactions are read-only), reads in one short transaction and closes it: the
page can neither change nor block the worker. A database that is
missing, locked, corrupt or not migrated gives a 503 page that says so; everything shown is
escaped with html.escape. Optional HTTP basic auth checks `user:pbkdf2_sha256$...` lines from a
file (`hash_password` makes one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import re
import secrets
import shutil
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from edgeworker.errors import ConfigError, EdgeworkerError, NotFound
from edgeworker.libc import release_startup_memory, trim_heap

logger = logging.getLogger("edgeworker.web")

DEFAULT_LISTEN = "127.0.0.1:8077"
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
HASH_NAME = "pbkdf2_sha256"
HASH_ITERATIONS = 200_000  # about 0.2 s on a Raspberry Pi 4, once per user: see Auth


class BadRequest(EdgeworkerError):
    """A request parameter that cannot be used (HTTP 400)."""


# -- listening and auth ---------------------------------------------------------------------------

def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as '[::1]:8077') -> (host, port)."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not match:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. {DEFAULT_LISTEN} or [::1]:8077)")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (0-65535)")
    return host, port


def is_loopback(host: str) -> bool:
    """Does every address the host name stands for belong to this box alone?"""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback
                               for info in infos)


def hash_password(password: str, iterations: int = HASH_ITERATIONS) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return (f"{HASH_NAME}${iterations}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def _check_hash(stored: str, password: str) -> bool:
    _, iterations, salt, digest = stored.split("$")
    found = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt),
                                int(iterations))
    return hmac.compare_digest(found, base64.b64decode(digest))


class Auth:
    """Users from an auth file: one `user:pbkdf2_sha256$iterations$salt$hash` a line, `#`
    comments. A key derivation is slow by design, so a checked password is remembered (keyed by
    an HMAC under a per-process secret) instead of derived again for every page; derivations run
    one at a time, so that guessing at passwords takes one core at most from the box's jobs, and
    an unknown user costs one as well (the time taken does not tell which users exist)."""

    def __init__(self, path: Path):
        self.path = path
        self.users: dict[str, str] = {}
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"{path}: cannot read the auth file: {reason}") from None
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, stored = line.partition(":")
            parts = stored.split("$")
            if not (sep and user and len(parts) == 4 and parts[0] == HASH_NAME
                    and parts[1].isdigit() and _is_base64(parts[2]) and _is_base64(parts[3])):
                raise ConfigError(f"{path}:{number}: not `user:{HASH_NAME}$...` (make a line "
                                  "with `edgeworker serve --hash-password USER`)")
            self.users[user] = stored
        if not self.users:
            raise ConfigError(f"{path}: no users in the auth file")
        self._secret = secrets.token_bytes(32)
        self._known: set[bytes] = set()
        self._lock = threading.Lock()
        self._deriving = threading.Lock()
        self._decoy = hash_password(secrets.token_hex(8), int(next(iter(self.users.values()))
                                                             .split("$")[1]))

    def check(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, sep, password = base64.b64decode(header[6:], validate=True).decode() \
                .partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if not sep:
            return False
        stored = self.users.get(user)
        key = hmac.new(self._secret, f"{user}\0{password}\0{stored}".encode(), "sha256").digest()
        with self._lock:
            if stored is not None and key in self._known:
                return True
        with self._deriving:
            matches = _check_hash(stored or self._decoy, password)
        if stored is None or not matches:
            return False
        with self._lock:
            if len(self._known) > 100:
                self._known.clear()
            self._known.add(key)
        return True


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return bool(text)


# -- rendering ------------------------------------------------------------------------------------

def e(value: object) -> str:
    """Escape anything for HTML text and attribute values."""
    return html.escape("-" if value is None else str(value), quote=True)


def local_time(text: str | None) -> str:
    return datetime.fromisoformat(text).astimezone().strftime("%Y-%m-%d %H:%M:%S") if text \
        else "-"


def when(text: str | None) -> str:
    """A stored UTC time, shown in the box's zone, with UTC on hover."""
    if not text:
        return "-"
    utc = datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f'<time datetime="{e(text)}" title="{e(utc)}">{e(local_time(text))}</time>'


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    from edgeworker.config import format_duration

    return format_duration(round(seconds))


def size(count: int | None) -> str:
    if count is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return "-"  # not reached


def job_link(name: str | None, removed: bool = False) -> str:
    if not name:
        return "- (removed)"
    link = f'<a href="/jobs/{e(quote(name, safe=""))}">{e(name)}</a>'
    return link + (" (removed)" if removed else "")


def status_badge(status: str | None) -> str:
    return f'<span class="s {e(status)}">{e(status)}</span>' if status else "-"


def schedule_words(job: dict) -> str:
    """A job's schedule in words: 'every 5 minutes', 'daily at 02:00 (Europe/Berlin)'."""
    if job["every_seconds"] is not None:
        seconds = job["every_seconds"]
        for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
            if seconds >= length and seconds % length == 0:
                count = int(seconds // length)
                return f"every {unit}" if count == 1 else f"every {count} {unit}s"
        return job["schedule"]
    zone = f" ({job['timezone']})" if job["timezone"] else ""
    return cron_words(job["cron"] or "") + zone


DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]


def cron_words(expr: str) -> str:
    fields = expr.split()
    if len(fields) != 5:
        return f"cron {expr}"
    minute, hour, day, month, weekday = fields
    plain = r"\d{1,2}"
    step = re.fullmatch(r"\*/(\d+)", minute)
    if step and hour == day == month == weekday == "*":
        return f"every {step.group(1)} minutes"
    if minute == hour == day == month == weekday == "*":
        return "every minute"
    if re.fullmatch(plain, minute) and hour == day == month == weekday == "*":
        return f"hourly at :{int(minute):02d}"
    if re.fullmatch(plain, minute) and re.fullmatch(plain, hour) and month == "*":
        at = f"{int(hour):02d}:{int(minute):02d}"
        if day == weekday == "*":
            return f"daily at {at}"
        if day == "*" and re.fullmatch(r"[0-7]", weekday):
            return f"{DAYS[int(weekday) % 7]}s at {at}"
        if weekday == "*" and re.fullmatch(plain, day):
            return f"monthly on day {int(day)} at {at}"
    return f"cron {expr}"


STYLE = """\
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2327;background:#f6f7f7}
header{background:#1d2327;color:#fff;padding:.6em 1em;display:flex;flex-wrap:wrap;gap:.4em 1.2em;
align-items:baseline}
header b{font-size:1.1em}header a{color:#c3e4ff;text-decoration:none}
main{padding:.5em 1em 2em;max-width:84em}
h1{font-size:1.3em;margin:.6em 0}h2{font-size:1.1em;margin:1.2em 0 .4em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;background:#fff;min-width:100%}
th,td{padding:.3em .6em;border-bottom:1px solid #e2e4e7;text-align:left;vertical-align:top;
white-space:nowrap}
th{background:#eef0f2;font-weight:600}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em;background:#fff;padding:.6em;
margin:0}
dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}
pre{background:#fff;border:1px solid #e2e4e7;padding:.6em;overflow-x:auto;max-height:40em;
white-space:pre-wrap;overflow-wrap:anywhere}
.s{padding:0 .35em;border-radius:3px;background:#e2e4e7}
.succeeded,.up{background:#c6f0d0}.failed,.down{background:#f8c9c9}.running{background:#cde4fb}
.cancelled{background:#eee}.created{background:#fdf1c7}
.strip{display:inline-flex;gap:1px;align-items:flex-end;height:1.2em}
.strip a{display:block;width:4px;height:100%;background:#5cb85c}
.strip a.failed{background:#d9534f}
.muted{color:#646970}.warn{color:#a00}
nav.pages{margin:.8em 0}
@media (max-width:40em){main{padding:.3em .5em}th,td{padding:.25em .4em}}
"""


def page(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · edgeworker on {e(socket.gethostname())}</title>
<link rel="stylesheet" href="/style.css"></head>
<body><header><b>edgeworker</b> <span>{e(socket.gethostname())}</span>
<a href="/">Overview</a><a href="/jobs">Jobs</a><a href="/failures">Failures</a></header>
<main><h1>{e(title)}</h1>
{body}
</main></body></html>
"""


def table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                   for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>' \
           "</table></div>"


def definitions(items: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def render_overview(d: dict) -> str:
    w = d["worker"]
    if w["running"]:
        pid = f" (pid {w['pid']})" if w["pid"] else ""
        since = f" since {when(w['since'])}" if w["since"] else ""
        worker = f'<span class="s up">up</span>{e(pid)}{since}'
    else:
        seen = f", last seen {when(w['last_seen'])}" if w["last_seen"] else ""
        worker = f'<span class="s down">down</span>{seen}'
    if w["alert"]:
        worker += f'<br><span class="warn">{e(w["alert"])}</span>'
    rec = d["last_recovery"]
    from edgeworker.models import recovery_line, recovery_who

    recovery = (f"{when(rec['at'])}: {e(recovery_line(rec))} ({rec['duration_ms']:g} ms)"
                f"{e(recovery_who(rec))}" if rec
                else "none yet (no worker has started)")
    from edgeworker.cli import clock_line

    disk = d["disk"]
    day = d["last_24h"]
    counts = ", ".join(f'{status_badge(s)} {day[s]}' for s in
                       ("succeeded", "failed", "cancelled", "running", "created"))
    body = definitions([
        ("Worker", worker),
        ("Last recovery", recovery),
        ("Clock", e(clock_line(d["clock"]))),
        ("Database", f"{e(d['database'])}, {e(size(d['database_bytes']))}"),
        *([("Free disk", f"{e(size(disk['free_bytes']))} of {e(size(disk['total_bytes']))}")]
          if disk else []),
        ("Last 24 h", f'{counts} <span class="muted">(runs created since '
                      f"{when(day['since'])}, by state now)</span>"),
    ])
    body += "<h2>Workers</h2>" + table(
        ["Worker", "Host", "Pid", "Started", "Last heartbeat", "Version", "State", "Tags"],
        [[e(w["name"]), e(w["host"]), e(w["pid"]), when(w["started_at"]),
          when(w["last_heartbeat"]), e(w["version"]), worker_state(w),
          e(", ".join(w["tags"])) or "-"] for w in d["workers"]],
        "none yet (no worker has started)")
    return page("Overview", body)


def worker_state(w: dict) -> str:
    if w["stopped_at"]:
        return f'<span class="s down">stopped</span> {when(w["stopped_at"])}'
    return f'<span class="s {"up" if w["state"] == "up" else "failed"}">{e(w["state"])}</span>'


def strip(outcomes: list[dict]) -> str:
    bars = "".join(
        f'<a class="{e(o["status"])}" href="/runs/{o["id"]}" '
        f'title="{e(o["status"])} {e(local_time(o["finished_at"]))}"></a>'
        for o in reversed(outcomes))
    return f'<span class="strip" aria-label="last {len(outcomes)} outcomes">{bars}</span>' \
        if outcomes else '<span class="muted">no runs yet</span>'


def next_run(job: dict) -> str:
    if job["paused"]:
        return "paused"
    if not job["enabled"]:
        return "disabled"
    if job["running"]:
        return status_badge("running")
    if job["overdue"]:
        return f'<span class="warn">overdue since {when(job["next_run_at"])}</span>'
    return when(job["next_run_at"])


def render_jobs(rows: list[dict]) -> str:
    body = table(
        ["Job", "Last 50", "Last outcome", "Took", "Next run", "Schedule", "State"],
        [[job_link(j["name"]), strip(j["recent_outcomes"]),
          f"{status_badge(j['last_status'])} {when(j['last_finished_at'])}"
          if j["last_status"] else "-",
          e(duration(j["last_duration_seconds"])), next_run(j), e(schedule_words(j)),
          "paused" if j["paused"] else ("enabled" if j["enabled"] else "disabled")]
         for j in rows], "No jobs.")
    return page("Jobs", body)


def task_rows(tasks: list[dict], with_job: bool) -> list[list[str]]:
    rows = []
    for t in tasks:
        took = None
        if t["started_at"] and t["finished_at"]:
            took = (datetime.fromisoformat(t["finished_at"])
                    - datetime.fromisoformat(t["started_at"])).total_seconds()
        row = [f'<a href="/runs/{t["id"]}">{t["id"]}</a>', status_badge(t["status"]),
               when(t["scheduled_for"]), when(t["finished_at"]), e(duration(took)),
               e(t["attempt"]), "yes" if t["recovered_count"] else "",
               e(t["exit_code"]), e(_last_line(t["error"]))]
        if with_job:
            row.insert(1, job_link(t["job"], t["job_id"] is None))
        rows.append(row)
    return rows


def _last_line(text: str | None, width: int = 80) -> str:
    lines = (text or "").strip().splitlines()
    line = lines[-1] if lines else ""
    return line if len(line) <= width else line[: width - 1] + "…"


TASK_HEADERS = ["Run", "Status", "Scheduled for", "Finished", "Took", "Attempt", "Recovered",
                "Exit", "Error"]


def older(path: str, d: dict) -> str:
    if d["next_before"] is None:
        return ""
    limit = f"&limit={d['limit']}" if d["limit"] != PAGE_SIZE else ""
    href = f"{path}?before={d['next_before']}{limit}"
    return f'<nav class="pages"><a href="{e(href)}">Older runs →</a></nav>'


def render_job(d: dict) -> str:
    j = d["job"]
    if j is None:
        about = '<p class="muted">This job was removed; its runs stay under its name.</p>'
    else:
        about = definitions([
            ("Schedule", f"{e(schedule_words(j))} <span class='muted'>({e(j['schedule'])})"
                         "</span>"),
            ("Next run", next_run(j)),
            ("Runs on", e(", ".join(j["run_on"])) if j["run_on"] else "any worker"),
            ("Runs", f"{e(j['kind'])}: {e(j['target'])}"),
            ("Attempts", e(j["max_attempts"])),
            ("Timeout", e(duration(j["timeout_seconds"]) if j["timeout_seconds"] else "none")),
            ("Source", e(j["source"])),
        ])
    runs = table(TASK_HEADERS, task_rows(d["tasks"], with_job=False), "No runs.")
    path = f"/jobs/{quote(d['name'], safe='')}"
    return page(f"Job {d['name']}", f"{about}<h2>Runs, newest first</h2>{runs}"
                f"{older(path, d)}")


def render_run(t: dict) -> str:
    label = t["job"] or "-"
    items = [("Job", job_link(t["job"], t["job_id"] is None)),
             ("Status", status_badge(t["status"]))]
    items += [(key.replace("_", " ").capitalize(), e(t[key]))
              for key in ("origin", "attempt", "recovered_count", "exit_code", "worker")]
    items += [(key.replace("_", " ").capitalize(), when(t[key]))
              for key in ("scheduled_for", "due_at", "created_at", "started_at", "finished_at")]
    body = definitions(items)
    if t["error"]:
        body += f"<h2>Error</h2><pre>{e(t['error'].rstrip())}</pre>"
    body += (f"<h2>Output (last 64 KiB)</h2><pre>{e(t['output'].rstrip())}</pre>" if t["output"]
             else '<h2>Output</h2><p class="muted">none</p>')
    body += hooks(t)
    return page(f"Run {t['id']} of {label}", body)


def hooks(t: dict) -> str:
    """What ran after this run: its hooks' outcomes and the pings that had to wait
    (`report.hooks_of`); a ping delivered at once leaves no trace."""
    if not t.get("hooks"):
        return ""
    rows = [[e(h["hook"]), status_badge(h["status"]), when(h["at"]),
             e("" if h["exit_code"] is None else str(h["exit_code"])), e(h["error"] or "")]
            for h in t["hooks"]]
    return "<h2>Hooks and pings</h2>" + table(["Hook", "Status", "At", "Exit", "Error"], rows, "")


def render_failures(d: dict) -> str:
    body = table(["Run", "Job", *TASK_HEADERS[1:]], task_rows(d["tasks"], with_job=True),
                 "No failed runs.")
    return page("Failures", body + older("/failures", d))


def render_error(status: HTTPStatus, message: str) -> str:
    return page(f"{status.value} {status.phrase}", f'<p class="warn">{e(message)}</p>')


# -- serving --------------------------------------------------------------------------------------

class Site:
    """The pages over one database path: routing, data (edgeworker.report) and rendering."""

    def __init__(self, database: Path | str, busy_timeout: float = 1.0, workers: int = 2,
                 busy_alert: float | None = None):
        from edgeworker import db, migrate, models, postgres, report  # noqa: F401 (imported before serving)

        self.on_server = db.is_url(database)
        self.path = postgres.check_url(database) if self.on_server else Path(database)
        self.workers, self.busy_alert = workers, busy_alert  # the worker's, for its busy alert
        self.migrations = migrate.discover(dialect="postgresql" if self.on_server else "sqlite")
        # One database object: peewee keeps a connection per thread, and each request (a thread
        # of its own) opens one and closes it when done. A small page cache: a page reads a few
        # hundred rows at most, or walks newer rows once, where a cache does not help. On
        # PostgreSQL, every transaction of the connection is read-only.
        self.database = (postgres.database(self.path, busy_timeout=busy_timeout, readonly=True)
                         if self.on_server else
                         db.ReadOnlyDatabase(self.path, busy_timeout, cache_kib=128))
        models.bind(self.database)

    def view(self, path: str, query: dict[str, list[str]]) -> tuple[object, Callable]:
        """(data, render) for a path, or NotFound / BadRequest / DatabaseError."""
        from edgeworker import report
        from edgeworker.clock import utcnow

        params = {key: values[-1] for key, values in query.items()}
        paged = path == "/failures" or path.startswith("/jobs/")
        unknown = sorted(set(params) - {"format"} - ({"before", "limit"} if paged else set()))
        if unknown:
            raise BadRequest(f"unknown parameter: {unknown[0]}")
        before = _positive(params, "before")
        limit = _positive(params, "limit") or PAGE_SIZE
        if limit > MAX_PAGE_SIZE:
            raise BadRequest(f"limit must be at most {MAX_PAGE_SIZE}")
        if path == "/":
            return self.with_database(lambda: self.overview(utcnow())), render_overview
        if path == "/jobs":
            return self.with_database(lambda: report.jobs_with_outcomes(utcnow())), render_jobs
        if path == "/failures":
            return (self.with_database(lambda: report.failures(limit, before)),
                    render_failures)
        match = re.fullmatch(r"/jobs/([^/]+)", path)
        if match:
            try:
                name = unquote(match.group(1), errors="strict")
            except UnicodeDecodeError:
                raise BadRequest("malformed job name in the path (not UTF-8)") from None
            return (self.with_database(lambda: report.job(name, utcnow(), limit, before)),
                    render_job)
        match = re.fullmatch(r"/runs/(\d{1,18})", path)
        if match:
            return self.with_database(lambda: report.task(int(match.group(1)))), render_run
        raise NotFound(f"no page at {path}")

    def overview(self, now: datetime) -> dict:
        from edgeworker import report
        from edgeworker.db import running_workers, worker_pid

        running = running_workers(self.path)
        pid = worker_pid(self.path) if running is None else next(iter(running.values()), None)
        if self.on_server:  # the server's disk is not this box's
            size_bytes = self.database.execute_sql(
                "SELECT pg_database_size(current_database())").fetchone()[0]
            disk = None
        else:
            size_bytes = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"))
                             if p.exists())
            usage = shutil.disk_usage(self.path.parent)
            disk = {"free_bytes": usage.free, "total_bytes": usage.total}
        worker = report.worker(pid)
        names = list(running) if running is not None else [
            n for n in [report.worker_name(pid)] if n]
        worker["names"] = names
        worker["alert"] = next(filter(None, (report.all_busy(n, self.workers, self.busy_alert, now)
                                             for n in names)), None)
        return {"database": str(self.path), "database_bytes": size_bytes, "disk": disk,
                "worker": worker, "last_recovery": report.last_recovery(),
                "clock": report.clock(now, pid is not None), "last_24h": report.last_day(now),
                "workers": report.workers(now, pid, running=running)}

    def with_database(self, read: Callable[[], object]) -> object:
        """Run `read` in one read transaction on a fresh read-only connection."""
        from edgeworker import db, migrate
        from edgeworker.errors import DatabaseError

        if not self.on_server:
            if not self.path.exists():
                raise DatabaseError(f"{self.path}: no database here yet (the worker creates it "
                                    "with `edgeworker migrate`)")
            db.check_sqlite_file(self.path)
        database = self.database
        try:
            with db.translate_errors(self.path):
                database.connect()
                with database.atomic():
                    if migrate.plan(database, self.migrations):
                        if not self.on_server:
                            db.check_ours(self.path)
                        raise DatabaseError(f"{self.path}: the database is being migrated or "
                                            "needs `edgeworker migrate`; try again shortly")
                    return read()
        finally:
            database.close()


def parse_query(text: str) -> dict[str, list[str]]:
    try:
        return parse_qs(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
    except ValueError:  # UnicodeDecodeError included
        raise BadRequest("malformed query string") from None


def _positive(params: dict[str, str], key: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if not re.fullmatch(r"[1-9]\d{0,17}", value):
        raise BadRequest(f"{key} must be a positive whole number, not {value!r}")
    return int(value)


class Handler(BaseHTTPRequestHandler):
    server_version = "edgeworker"
    sys_version = ""
    site: Site
    auth: Auth | None

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.respond(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self.respond(head=True)

    def respond(self, head: bool) -> None:
        if self.auth is not None and not self.auth.check(self.headers.get("Authorization")):
            self.send(HTTPStatus.UNAUTHORIZED, "text/plain; charset=utf-8",
                      b"authentication required\n", head,
                      {"WWW-Authenticate": 'Basic realm="edgeworker", charset="UTF-8"'})
            return
        as_json = False
        try:
            url = urlsplit(self.path)
            query = parse_query(url.query)
            fmt = query.get("format", ["html"])[-1]
            if fmt not in ("html", "json"):
                raise BadRequest(f"format must be html or json, not {fmt!r}")
            as_json = fmt == "json"
            if url.path == "/style.css":
                self.send(HTTPStatus.OK, "text/css; charset=utf-8", STYLE.encode(), head,
                          {"Cache-Control": "max-age=600"})
                return
            data, render = self.site.view(url.path, query)
            status = HTTPStatus.OK
            text = json.dumps(data, indent=2, sort_keys=True) + "\n" if as_json else render(data)
        except Exception as exc:
            if isinstance(exc, NotFound):
                status = HTTPStatus.NOT_FOUND
            elif isinstance(exc, BadRequest):
                status = HTTPStatus.BAD_REQUEST
            elif isinstance(exc, EdgeworkerError):  # the database: missing, locked, not migrated
                status = HTTPStatus.SERVICE_UNAVAILABLE
            else:
                logger.error("internal error on %s\n%s", self.path, traceback.format_exc())
                status = HTTPStatus.INTERNAL_SERVER_ERROR
                exc = "internal error (details in the server's log)"
            text = (json.dumps({"error": str(exc), "status": status.value}) + "\n" if as_json
                    else render_error(status, str(exc)))
        self.send(status, "application/json" if as_json else "text/html; charset=utf-8",
                  text.encode(), head)

    def send(self, status: HTTPStatus, content_type: str, payload: bytes, head: bool,
             headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy",
                         "default-src 'none'; style-src 'self'; img-src 'self'")
        self.send_header("Referrer-Policy", "no-referrer")
        if not content_type.startswith("text/css"):
            self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(payload)

    def log_request(self, code="-", size="-") -> None:
        # A page viewed is not news (and each log line is a write on an SD card): the requests
        # that failed are, at info; every request with --debug.
        code = code.value if isinstance(code, HTTPStatus) else code
        level = logging.INFO if isinstance(code, int) and code >= 400 else logging.DEBUG
        logger.log(level, '%s "%s" %s', self.address_string(), self.requestline, code)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        logger.info("%s %s", self.address_string(), format % args)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a request under way only reads: stopping need not wait for it
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], handler: type[Handler]):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)
        self._active = 0
        self._active_lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:
        """One log line, never socketserver's traceback on stderr: a client that went away
        mid-answer is routine (debug); anything else is an error."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            logger.debug("%s went away: %s", client_address[0], exc)
        else:
            logger.error("request from %s failed: %s: %s", client_address[0],
                         type(exc).__name__, exc)

    def process_request_thread(self, request, client_address) -> None:
        with self._active_lock:
            self._active += 1
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1
                last = self._active == 0
            if last:
                # A page's rows, strings and SQLite cache are freed by now, but glibc keeps the
                # pages: give them back, or the process grows with every large page it served.
                trim_heap()


def make_server(site: Site, listen: str, auth_file: Path | None) -> Server:
    host, port = parse_listen(listen)
    auth = Auth(auth_file) if auth_file is not None else None
    if auth is None and not is_loopback(host):
        raise ConfigError(f"--listen {listen}: not a loopback address; give --auth-file to "
                          "serve the page beyond this box")
    handler = type("BoundHandler", (Handler,), {"site": site, "auth": auth})
    try:
        return Server((host, port), handler)
    except OSError as exc:
        raise ConfigError(f"--listen {listen}: cannot listen there: "
                          f"{exc.strerror or exc}") from None


class Stop(BaseException):
    """SIGTERM or SIGINT, raised in the main thread wherever it is. A BaseException, as
    KeyboardInterrupt is: socketserver handles an Exception raised while it starts a request's
    thread as that request's error, and would serve on."""


def serve(server: Server) -> None:
    """Serve until SIGTERM or SIGINT (requests under way are not waited for: they only read)."""
    def stop(signum, frame) -> None:
        raise Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        release_startup_memory()
        host, port = server.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        logger.info("edgeworker serve: http://%s:%s/ (database %s)", shown, port,
                    server.RequestHandlerClass.site.path)
        server.serve_forever(poll_interval=None)  # no wake-ups while nobody asks
    except Stop:
        logger.info("edgeworker serve: stopped")
    finally:
        server.server_close()



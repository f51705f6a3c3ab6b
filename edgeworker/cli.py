"""The `edgeworker` command line.

One error boundary (`EdgeworkerGroup.invoke`) turns every `EdgeworkerError` into `Error: <one
line>` on stderr and its exit code: 0 ok, 1 an error the user can act on, 2 usage, 3 pending
migrations (`migrate --check`). `--debug` shows tracebacks. Modules that pull in huey or peewee are
imported inside the commands, so that `--help` and `--version` start fast on a small box.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from edgeworker import __version__, entry
from edgeworker.entry import output_closed, reader_gone
from edgeworker.errors import ConfigError, EdgeworkerError, explain

DEFAULT_CONFIG = Path(entry.DEFAULT_CONFIG)
DEFAULT_DB = Path(entry.DEFAULT_DB)
# SQLite's integers are 64-bit: a larger number on the command line is a usage error, not an
# OverflowError deep inside a query.
INT64_MAX = 2**63 - 1
TASK_ID = click.IntRange(1, INT64_MAX)


class UserError(click.ClickException):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class DatabaseParam(click.ParamType):
    """--db: a file path (SQLite), or a `postgresql://` URL kept as it is written."""

    name = "path|url"

    def convert(self, value: Any, param: Any, ctx: Any) -> Path | str:
        if isinstance(value, str) and value.startswith(("postgresql://", "postgres://")):
            return value  # checked when it is opened (edgeworker.postgres.check_url)
        return click.Path(dir_okay=False, path_type=Path).convert(value, param, ctx)


class Context:
    """What every command needs, resolved lazily from the global options."""

    def __init__(self, config_option: Path | None, db_option: Path | str | None, debug: bool):
        self.config_option = config_option
        self.db_option = db_option
        self.debug = debug
        self._config: Any = None
        self._db: Any = None
        self._cache: dict = {}

    @property
    def config(self):
        if self._config is None:
            from edgeworker.config import load_config

            self._config = load_config(entry.config_file(self.config_option))
        return self._config

    @property
    def db_path(self) -> Path | str:
        """The SQLite file, or the PostgreSQL URL."""
        from edgeworker.db import is_url

        database = self.db_option or self.config.worker.database or DEFAULT_DB
        return database if is_url(database) else Path(database)

    @property
    def on_server(self) -> bool:
        return isinstance(self.db_path, str)

    def open(self, create: bool = False, check_schema: bool = True, readonly: bool = False,
             foreign: bool = False):
        """Open the database and bind the models to it; `readonly` for commands that only look
        (they write nothing, not even SQLite's -wal and -shm files)."""
        if self._db is None:
            from edgeworker import db, migrate, models

            settings = self.config.worker
            if check_schema and not readonly:
                # Look before opening to write: opening sets WAL mode, a change to the file.
                migrate.ensure_current_file(self.db_path, settings.busy_timeout)
                foreign = True  # checked just now
            self._db = db.open_database(self.db_path, durability=settings.durability,
                                        busy_timeout=settings.busy_timeout,
                                        create=create, readonly=readonly, foreign=foreign)
            models.bind(self._db)
            if check_schema:
                with db.translate_errors(self.db_path):
                    migrate.ensure_current(self._db)
        return self._db

    def now(self):
        """The time a command records (`Ledger.recording_time`)."""
        from edgeworker.clock import utcnow

        return self.ledger().recording_time(utcnow())

    def ledger(self):
        if "ledger" not in self._cache:
            from edgeworker.ledger import Ledger

            self._cache["ledger"] = Ledger(self.open(), self.config.worker.worker_name())
        return self._cache["ledger"]

    def close(self) -> None:
        if self._db is not None and not self._db.is_closed():
            self._db.close()


class EdgeworkerGroup(click.Group):
    def make_context(self, *args, **kwargs) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except BrokenPipeError:  # `edgeworker --help | head -1`
            if not reader_gone():
                raise
            output_closed()

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if isinstance(exc, BrokenPipeError) and reader_gone():
                output_closed()
            if _debug(ctx):
                raise
            obj = ctx.find_object(Context)
            raise UserError(*explain(exc, lambda: obj.db_path if obj else DEFAULT_DB)) from None


def _debug(ctx: click.Context) -> bool:
    obj = ctx.find_object(Context)
    return bool(obj and obj.debug)


pass_ctx = click.make_pass_decorator(Context)


def emit(data: Any, as_json: bool, render) -> None:
    if as_json:
        import json

        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        render(data)


def table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    for row in [headers, *rows]:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())


def show_time(text: str | None) -> str:
    from edgeworker.clock import display, from_text

    return display(from_text(text)) if text else "-"


@click.group(cls=EdgeworkerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="edgeworker")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              envvar="EDGEWORKER_CONFIG", show_envvar=True,
              help="TOML config file [default: ./edgeworker.toml if present].")
@click.option("--db", "db_path", type=DatabaseParam(), envvar="EDGEWORKER_DB", show_envvar=True,
              help="SQLite database file, or a postgresql:// URL [default: the config's, else "
                   "./edgeworker.db].")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, db_path: Path | str | None,
        debug: bool) -> None:
    """Run scheduled jobs from one SQLite file, losing nothing when the power goes."""
    ctx.obj = Context(config_path, db_path, debug)
    ctx.call_on_close(ctx.obj.close)


def next_run(job: dict) -> str:
    if job["running"]:
        return "running"
    if job["overdue"]:
        return f"overdue since {show_time(job['next_run_at'])}"
    return show_time(job["next_run_at"])


# -- migrate / check-config ---------------------------------------------------------------------

@cli.command()
@click.option("--check", is_flag=True, help="Exit 3 if migrations are pending, 0 if up to date.")
@click.option("--dry-run", is_flag=True, help="List the migrations that would run.")
@click.option("--to", "target", type=click.IntRange(0, INT64_MAX), metavar="VERSION",
              help="Apply migrations up to and including VERSION only.")
@click.option("--force", is_flag=True,
              help="Add edgeworker's tables to a database that holds another program's.")
@click.option("--copy-from", "copy_from", type=click.Path(path_type=Path), metavar="FILE",
              help="Then copy this SQLite database's jobs and history into the (empty) "
                   "PostgreSQL database.")
@pass_ctx
def migrate(obj: Context, check: bool, dry_run: bool, target: int | None, force: bool,
            copy_from: Path | None) -> None:
    """Create or upgrade the database schema."""
    from edgeworker import db
    from edgeworker import migrate as migrations

    if copy_from is not None:
        if check or dry_run or target is not None:
            raise click.UsageError("--copy-from cannot be combined with --check, --dry-run or "
                                   "--to")
        _copy_from(obj, copy_from, force)
        return
    creating = not obj.on_server and not obj.db_path.exists()
    if creating and (check or dry_run):
        todo = migrations.discover()
        todo = [m for m in todo if target is None or m.version <= target]
    elif check or dry_run:
        database = obj.open(check_schema=False, readonly=True, foreign=force)
        with db.translate_errors(obj.db_path):
            todo = migrations.plan(database, migrations.for_database(database), target)
    else:
        try:
            database = obj.open(create=True, check_schema=False, foreign=force)
            with db.translate_errors(obj.db_path):
                todo = migrations.plan(database, migrations.for_database(database), target)
            _migrate(obj, database, todo)
        except BaseException:
            if creating:  # a migrate that fails leaves no empty or half-made database
                obj.close()
                db.remove_new_database(obj.db_path)
            raise
        return
    if check:
        if todo:
            click.echo(f"{len(todo)} pending: " + ", ".join(m.label for m in todo))
            raise click.exceptions.Exit(3)
        click.echo("up to date")
        return
    for m in todo:
        click.echo(f"would apply {m.label}")
    if not todo:
        click.echo("up to date")


def _migrate(obj: Context, database, todo: list) -> None:
    from edgeworker import db
    from edgeworker import migrate as migrations

    if todo:
        pid = db.worker_pid(obj.db_path)
        if pid:
            raise EdgeworkerError(f"a worker (pid {pid}) is running on {obj.db_path}; stop it "
                                  "before migrating")
    with db.translate_errors(obj.db_path):
        for m in migrations.apply(database, todo):
            click.echo(f"applied {m.label}")
    if not todo:
        click.echo("up to date")


def _copy_from(obj: Context, source_path: Path, force: bool) -> None:
    from edgeworker import db, transfer

    if not obj.on_server:
        raise ConfigError(f"--copy-from: the database to copy into must be PostgreSQL (a "
                          f"postgresql:// URL in --db, $EDGEWORKER_DB or [worker] database), not "
                          f"{obj.db_path}; to move an SQLite file, copy the file")
    busy_timeout = obj.config.worker.busy_timeout
    source = transfer.check_source(source_path, busy_timeout)
    try:
        target = db.open_database(obj.db_path, busy_timeout=busy_timeout, foreign=force)
        try:
            todo = transfer.check_target(target, obj.db_path)
            # no worker of the config's name starts on it while the copy runs (any other sees
            # the schema unmigrated, or the copy's rows once it commits)
            with db.worker_lock(obj.db_path, obj.config.worker.worker_name()):
                applied, counts = transfer.copy(source, source_path, target, obj.db_path, todo)
        finally:
            target.close()
    finally:
        source.close()
    for m in applied:
        click.echo(f"applied {m.label}")
    click.echo(f"{transfer.summary(counts)} from {source_path}")


@cli.command("check-config")
@pass_ctx
def check_config(obj: Context) -> None:
    """Validate the config file, including that every callable imports."""
    from edgeworker import trust
    from edgeworker.runners import verify_callables

    config = obj.config
    if config.path is None:
        raise ConfigError(f"no config file: give --config or $EDGEWORKER_CONFIG, or create "
                          f"./{DEFAULT_CONFIG}")
    trust.verify(config)
    verify_callables(config)
    click.echo(f"{config.path}: ok ({len(config.jobs)} jobs)")


# -- run / recover ------------------------------------------------------------------------------

def _worker_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from edgeworker.config import check_worker_name

    try:
        return None if value is None else check_worker_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command()
@click.option("--migrate", "apply_migrations", is_flag=True,
              help="Create the database or apply pending migrations first.")
@click.option("--workers", type=click.IntRange(1, 64), help="Worker threads [default: config].")
@click.option("--log-format", type=click.Choice(["text", "json"]),
              help="Log lines on stderr [default: config, else text].")
@click.option("--name", callback=_worker_name, envvar="EDGEWORKER_NAME", show_envvar=True,
              help="The worker's name on its database [default: config, else the host name].")
@pass_ctx
def run(obj: Context, apply_migrations: bool, workers: int | None, log_format: str | None,
        name: str | None) -> None:
    """Run the worker in the foreground (what systemd starts)."""
    # Plain arguments do not come here: edgeworker.entry runs the worker without click.
    raise click.exceptions.Exit(entry.run({
        "config_path": obj.config_option, "db_path": obj.db_option, "debug": obj.debug,
        "apply_migrations": apply_migrations, "workers": workers, "log_format": log_format,
        "name": name}))


@cli.command()
@click.option("--dry-run", is_flag=True, help="Print what recovery would do; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def recover(obj: Context, dry_run: bool, as_json: bool) -> None:
    """Recover tasks a dead worker left behind (the worker does this at every start)."""
    from edgeworker import recovery, report, schedule
    from edgeworker.clock import to_text
    from edgeworker.db import worker_lock, worker_pid

    obj.open(readonly=dry_run)
    ledger = obj.ledger()
    now = obj.now()
    pid = worker_pid(obj.db_path)
    if dry_run:  # PostgreSQL: what a start of this worker name would recover
        todo = recovery.plan(ledger, now, {ledger.worker} if ledger.postgres else None)
        if pid is None:
            todo.ended = recovery.count_leftovers(obj.db_path)
    else:
        with worker_lock(obj.db_path, ledger.worker):
            todo = recovery.recover(ledger, now)
    job_names = report.job_names()
    data = {
        "dry_run": dry_run,
        "worker_running": pid is not None,
        "counts": todo.counts(),
        "ended": todo.ended,
        "recover": [{"task_id": t.id, "job": job_names.get(t.job_id), "attempt": t.attempt,
                     "worker": t.worker} for t in todo.recover],
        "close": [{"task_id": t.id, "job": job_names.get(t.job_id), "status": status.value,
                   "reason": reason} for t, status, reason in todo.close],
        "schedule": [{"job": job.name,
                      "slot": to_text(schedule.next_run(job, ledger.last_slot(job.id), now))}
                     for job in todo.schedule] if dry_run else [
                         {"job": job.name} for job in todo.schedule],
    }

    def render(d: dict) -> None:
        verb = "would " if dry_run else ""
        if d["worker_running"] and dry_run:
            click.echo(f"note: a worker is running (pid {pid}); its running tasks are alive, and "
                       "it recovered at its own start")
        for item in d["recover"]:
            click.echo(f"{verb}recover task {item['task_id']} (job {item['job']}, interrupted "
                       f"attempt {item['attempt']} of worker {item['worker'] or '-'})")
        for item in d["close"]:
            action = "fail" if item["status"] == "failed" else "cancel"
            click.echo(f"{verb}{action} task {item['task_id']} (job {item['job'] or '-'}): "
                       f"{item['reason']}")
        for item in d["schedule"]:
            when = f" for {show_time(item['slot'])}" if "slot" in item else ""
            click.echo(f"{verb}schedule job {item['job']}{when}")
        click.echo(f"{'would have ' if dry_run else ''}{todo.line()}")

    emit(data, as_json, render)


# -- status -------------------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def status(obj: Context, as_json: bool) -> None:
    """What ran, what runs next, what was recovered."""
    from edgeworker import report
    from edgeworker.clock import utcnow
    from edgeworker.db import running_workers, worker_pid
    from edgeworker.models import recovery_line, recovery_who

    obj.open(readonly=True)
    ledger = obj.ledger()
    running = running_workers(obj.db_path)
    pid = worker_pid(obj.db_path) if running is None else next(iter(running.values()), None)
    names = list(running) if running is not None else [n for n in [report.worker_name(pid)] if n]
    settings = obj.config.worker
    alerts = [report.all_busy(n, settings.workers, settings.busy_alert, utcnow()) for n in names]
    data = {
        "database": str(obj.db_path),
        "durability": None if obj.on_server else settings.durability,  # SQLite's setting
        "worker": {"running": pid is not None, "pid": pid if pid and pid > 0 else None,
                   "names": names, "alert": next(filter(None, alerts), None)},
        "queue": report.queue_depth(ledger.db, utcnow()),
        "pings": report.pings(),
        "last_recovery": report.last_recovery(),
        "clock": report.clock(utcnow(), pid is not None),
        "workers": report.workers(utcnow(), pid, running=running),
        "jobs": report.jobs(utcnow(), with_counts=True),
    }

    def render(d: dict) -> None:
        names = d["worker"]["names"]
        if len(names) > 1:
            worker = f"{len(names)} running: {', '.join(names)}"
        elif d["worker"]["running"]:
            worker = f"running (pid {d['worker']['pid']})"
        else:
            worker = "not running"
        kind = f"durability {d['durability']}" if d["durability"] else "PostgreSQL"
        click.echo(f"database  {d['database']} ({kind})")
        click.echo(f"worker    {worker}")
        if d["worker"]["alert"]:
            click.echo(f"alert     {d['worker']['alert']}")
        click.echo(f"queue     {d['queue']['ready']} ready, {d['queue']['scheduled']} scheduled")
        if d["pings"]["waiting"]:
            why = d["pings"]["last_error"]
            click.echo(f"pings     {d['pings']['waiting']} waiting in the outbox since "
                       f"{show_time(d['pings']['oldest'])}" + (f" ({why})" if why else ""))
        rec = d["last_recovery"]
        if rec:
            click.echo(f"recovery  {show_time(rec['at'])}: {recovery_line(rec)} "
                       f"({rec['duration_ms']:g} ms){recovery_who(rec)}")
        else:
            click.echo("recovery  none yet (no worker has started)")
        click.echo(f"clock     {clock_line(d['clock'])}")
        if d["workers"]:
            click.echo("")
            table([[w["name"], w["host"], w["pid"], show_time(w["started_at"]),
                    show_time(w["last_heartbeat"]), w["version"],
                    f"stopped {show_time(w['stopped_at'])}" if w["stopped_at"] else w["state"],
                    ",".join(w["tags"]) or "-"]
                   for w in d["workers"]],
                  ["WORKER", "HOST", "PID", "STARTED", "LAST HEARTBEAT", "VERSION", "STATE",
                   "TAGS"])
        if not d["jobs"]:
            click.echo("no jobs")
            return
        click.echo("")
        rows = []
        for j in d["jobs"]:
            c = j["counts"]
            state = "paused" if j["paused"] else ("disabled" if not j["enabled"] else "")
            last = (f"{j['last_status']} {show_time(j['last_finished_at'])}"
                    if j["last_status"] else "-")
            rows.append([j["name"], j["schedule"], state or next_run(j), last, c["succeeded"],
                         c["failed"], c["cancelled"], c["running"], c["created"]])
        table(*with_run_on(d["jobs"], rows, [
            "JOB", "SCHEDULE", "NEXT RUN", "LAST RESULT", "OK", "FAILED", "CANCELLED", "RUNNING",
            "WAITING"]))

    emit(data, as_json, render)


def with_run_on(jobs: list[dict], rows: list[list], headers: list[str]) -> tuple[list, list]:
    """A table of jobs with a RUN ON column after the schedule, where a job has run_on."""
    if not any(j["run_on"] for j in jobs):
        return rows, headers
    at = headers.index("SCHEDULE") + 1
    return ([[*row[:at], ",".join(j["run_on"]) or "-", *row[at:]]
             for j, row in zip(jobs, rows, strict=True)], [*headers[:at], "RUN ON", *headers[at:]])


def clock_line(view: dict) -> str:
    from edgeworker.clock import span

    daemon = f" ({view['time_daemon']})" if view["time_daemon"] else ""
    parts = [("synchronised" if view["synchronised"] else "not synchronised") + daemon]
    if view["behind_seconds"] >= 1:
        parts.append(f"{span(view['behind_seconds']).lstrip('+')} behind the newest time "
                     "recorded")
    step = view["last_step"]
    if step:
        followed = "" if step["moved"] else ", not followed"
        parts.append(f"last step {span(step['seconds'])} at {show_time(step['at'])}{followed}")
    if view["cron_held_since"]:
        parts.append(f"cron jobs held for {span(view['cron_held_seconds']).lstrip('+')}, "
                     "waiting for a synchronised clock")
    return "; ".join(parts)


# -- jobs ---------------------------------------------------------------------------------------

@cli.group(cls=EdgeworkerGroup)
def jobs() -> None:
    """Manage jobs: list, add, remove, pause, resume, sync, run."""


@jobs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def jobs_list(obj: Context, as_json: bool) -> None:
    """List jobs with their schedule and next run."""
    from edgeworker import report
    from edgeworker.clock import utcnow

    obj.open(readonly=True)
    data = report.jobs(utcnow())

    def render(rows: list[dict]) -> None:
        if not rows:
            click.echo("no jobs")
            return
        table(*with_run_on(rows, [[j["name"], j["kind"], j["schedule"],
                                   "paused" if j["paused"] else ("yes" if j["enabled"] else "no"),
                                   next_run(j), j["source"], j["target"]] for j in rows],
                           ["NAME", "KIND", "SCHEDULE", "ENABLED", "NEXT RUN", "SOURCE",
                            "TARGET"]))

    emit(data, as_json, render)


@jobs.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def jobs_show(obj: Context, name: str, as_json: bool) -> None:
    """Show one job: its settings, next run, and which workers take its runs."""
    from edgeworker import report
    from edgeworker.clock import utcnow
    from edgeworker.db import worker_pid

    obj.open(readonly=True)
    data = report.job_detail(name, utcnow(), worker_pid(obj.db_path))

    def render(j: dict) -> None:
        state = "paused" if j["paused"] else ("yes" if j["enabled"] else "no")
        source = j["source"] + (f" (the config of {', '.join(j['defined_by'])})"
                                if j["defined_by"] else "")
        last = (f"{j['last_status']} {show_time(j['last_finished_at'])}"
                if j["last_status"] else "-")
        for key, shown in (("name", j["name"]), ("kind", j["kind"]), ("target", j["target"]),
                           ("schedule", j["schedule"]), ("enabled", state),
                           ("source", source),
                           ("run on", ", ".join(j["run_on"]) or "any worker"),
                           ("next run", next_run(j)), ("last result", last),
                           ("taken by", ", ".join(j["claimed_by"]) or "-")):
            click.echo(f"{key:16}{shown}")
        if j["waiting"]:
            click.echo(f"{'waiting':16}{j['waiting']}")

    emit(data, as_json, render)


@jobs.command("add")
@click.argument("name")
@click.option("--command", help="Command line to run (split with shlex unless --shell).")
@click.option("--callable", "callable_", metavar="MODULE:FUNCTION",
              help="Python callable to call with a TaskContext.")
@click.option("--shell", is_flag=True, default=None, help="Run --command through /bin/sh.")
@click.option("--isolate", is_flag=True, default=None,
              help="Run --callable in a child process that a timeout can stop.")
@click.option("--every", help="Interval, e.g. 30s, 5m, 1h30m.")
@click.option("--cron", help='5-field cron expression, e.g. "*/5 * * * *".')
@click.option("--timezone", help="Time zone of the cron expression [default: local].")
@click.option("--timeout", help="Stop a run after this long, e.g. 10m.")
@click.option("--max-attempts", type=click.IntRange(max=INT64_MAX),
              help="Attempts per run before it fails [default: 3].")
@click.option("--retry-delay", help="Base back-off between attempts [default: 10s].")
@click.option("--catch-up", type=click.Choice(["skip", "once", "all"]),
              help="Slots missed while down: skip, run once, or run all [default: skip].")
@click.option("--catch-up-limit", type=click.IntRange(max=INT64_MAX),
              help="At most this many missed slots [default: 10].")
@click.option("--jitter", help="Spread start times by up to this long.")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment (repeat).")
@click.option("--cwd", help="Working directory for a command.")
@click.option("--env-file", metavar="PATH",
              help="KEY=VALUE lines read at each run (mode 0600 or 0640), for secrets.")
@click.option("--on-failure", metavar="COMMAND",
              help="Run this after a run's final failure (split with shlex).")
@click.option("--on-success", metavar="COMMAND", help="Run this after a run succeeds.")
@click.option("--on-retry", metavar="COMMAND",
              help="Run this after a failed attempt that will be retried.")
@click.option("--ping-url", metavar="URL",
              help="Ping URL/start, URL, URL/fail (healthchecks.io style) for each run.")
@click.option("--alert-after", metavar="DURATION",
              help="Run --on-failure (status overdue) when no run succeeded for this long.")
@click.option("--run-on", "run_on", multiple=True, metavar="TAG",
              help="Only workers with this tag ([worker] tags) run it (repeat: any of them).")
@click.option("--disabled", is_flag=True, help="Add the job disabled.")
@pass_ctx
def jobs_add(obj: Context, name: str, **options: Any) -> None:
    """Add a job from the command line."""
    from edgeworker import jobs as catalog
    from edgeworker import trust
    from edgeworker.config import build_job_spec
    from edgeworker.runners import verify_callable

    raw: dict[str, Any] = {"name": name}
    keys = {"callable_": "callable", "max_attempts": "max_attempts",
            "catch_up_limit": "catch_up_limit"}
    for option, value in options.items():
        if value is None or option in ("env", "disabled") or value == ():
            continue
        raw[keys.get(option, option)] = list(value) if isinstance(value, tuple) else value
    if options["env"]:
        env = {}
        for item in options["env"]:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--env: {item!r} is not KEY=VALUE")
            env[key] = value
        raw["env"] = env
    if options["disabled"]:
        raw["enabled"] = False

    def fail(key: str | None, message: str) -> ConfigError:
        option = f"--{key.replace('_', '-')}: " if key and key != "name" else ""
        return ConfigError(f"{option}{message}" if key != "name" else f"NAME: {message}")

    spec = build_job_spec(raw, fail)
    try:
        trust.verify_job(spec, obj.config.worker.python_path)
    except ConfigError as exc:
        key, sep, rest = str(exc).partition(": ")
        raise ConfigError(f"--{key.replace('_', '-')}: {rest}" if sep else str(exc)) from None
    if spec.kind == "callable":
        verify_callable(spec.target, obj.config.worker.python_path)
    job = catalog.add_job(obj.ledger(), spec, obj.now())
    click.echo(f'added job "{job.name}" ({job.schedule_text})')


@jobs.command("remove")
@click.argument("name")
@pass_ctx
def jobs_remove(obj: Context, name: str) -> None:
    """Remove a job; its history stays, waiting runs are cancelled."""
    from edgeworker import jobs as catalog

    job = catalog.remove_job(obj.ledger(), name, obj.now())
    note = " (it is in the config file: the next sync adds it again)" \
        if job.source == "config" else ""
    click.echo(f'removed job "{name}"{note}')


@jobs.command("pause")
@click.argument("name")
@pass_ctx
def jobs_pause(obj: Context, name: str) -> None:
    """Stop scheduling a job (survives config syncs)."""
    from edgeworker import jobs as catalog

    _, changed = catalog.set_paused(obj.ledger(), name, True, obj.now())
    click.echo(f'paused job "{name}"' if changed else f'job "{name}" was already paused')


@jobs.command("resume")
@click.argument("name")
@pass_ctx
def jobs_resume(obj: Context, name: str) -> None:
    """Schedule a paused job again, from its next slot."""
    from edgeworker import jobs as catalog

    _, changed = catalog.set_paused(obj.ledger(), name, False, obj.now())
    click.echo(f'resumed job "{name}"' if changed else f'job "{name}" was not paused')


@jobs.command("sync")
@pass_ctx
def jobs_sync(obj: Context) -> None:
    """Make the database's config jobs match the config file."""
    from edgeworker import jobs as catalog
    from edgeworker import trust
    from edgeworker.runners import verify_callables

    config = obj.config
    if config.path is None:
        raise ConfigError(f"no config file to sync from: give --config or $EDGEWORKER_CONFIG, "
                          f"or create ./{DEFAULT_CONFIG}")
    trust.verify(config)
    verify_callables(config)
    report = catalog.sync_jobs(obj.ledger(), config.jobs, obj.now())
    click.echo(f"synced {config.path}: {report.summary()}")


@jobs.command("run")
@click.argument("name")
@pass_ctx
def jobs_run(obj: Context, name: str) -> None:
    """Run a job once, now, outside its schedule (the worker picks it up)."""
    from edgeworker import jobs as catalog
    from edgeworker.db import worker_pid

    ledger = obj.ledger()
    task = ledger.run_now(catalog.get_job(name), obj.now())
    note = "" if worker_pid(obj.db_path) else " (no worker is running: it runs when one starts)"
    click.echo(f'queued task {task.id} for job "{name}"{note}')


# -- tasks --------------------------------------------------------------------------------------

@cli.group(cls=EdgeworkerGroup)
def tasks() -> None:
    """Inspect and manage runs: list, show, retry, cancel, prune."""


@tasks.command("list")
@click.option("--job", "job_name", help="Only this job's tasks.")
@click.option("--status", type=click.Choice(["created", "running", "succeeded", "failed",
                                             "cancelled"]), help="Only tasks in this state.")
@click.option("--limit", type=click.IntRange(1, INT64_MAX), default=50, show_default=True,
              help="Newest first, at most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def tasks_list(obj: Context, job_name: str | None, status: str | None, limit: int,
               as_json: bool) -> None:
    """List tasks, newest first."""
    from edgeworker import report

    obj.open(readonly=True)
    data = report.tasks(job_name, status, limit)

    def render(rows: list[dict]) -> None:
        if not rows:
            click.echo("no tasks")
            return
        table([[t["id"], job_label(t), t["status"], t["origin"],
                show_time(t["scheduled_for"]), t["attempt"], t["recovered_count"],
                "-" if t["exit_code"] is None else t["exit_code"],
                _one_line(t["error"])] for t in rows],
              ["ID", "JOB", "STATUS", "ORIGIN", "SCHEDULED FOR", "ATTEMPT", "RECOVERED", "EXIT",
               "ERROR"])

    emit(data, as_json, render)


def job_label(task: dict) -> str:
    """A task's job: its name, and "(removed)" after a removed job's name (kept since 014)."""
    if task["job_id"] is not None:
        return task["job"]
    return f"{task['job'] or '-'} (removed)"


def _one_line(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[-1] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


@tasks.command("show")
@click.argument("task_id", type=TASK_ID)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def tasks_show(obj: Context, task_id: int, as_json: bool) -> None:
    """Show one task, with its output."""
    from edgeworker import report

    obj.open(readonly=True)
    data = report.task(task_id)

    def render(t: dict) -> None:
        for key in ("id", "job", "status", "origin", "attempt", "recovered_count", "exit_code",
                    "worker"):
            shown = job_label(t) if key == "job" else t[key]
            click.echo(f"{key:16}{'-' if shown is None else shown}")
        for key in ("scheduled_for", "due_at", "created_at", "started_at", "finished_at"):
            click.echo(f"{key:16}{show_time(t[key])}")
        if t["error"]:
            click.echo("error:")
            click.echo(t["error"].rstrip())
        click.echo("output:" if t["output"] else "output:         (none)")
        if t["output"]:
            click.echo(t["output"].rstrip("\n"))
        for hook in t["hooks"]:
            detail = "" if hook["exit_code"] is None else f" (exit {hook['exit_code']})"
            if hook["attempts"]:
                detail += f" ({hook['attempts']} failed tries)"
            elif hook["attempts"] == 0:
                detail += " (behind an earlier ping)"
            if hook["error"]:
                detail += f": {_one_line(hook['error'])}"
            click.echo(f"hook:           {hook['hook']} {hook['status']}{detail} "
                       f"at {show_time(hook['at'])}")

    emit(data, as_json, render)


@tasks.command("retry")
@click.argument("task_id", type=TASK_ID)
@pass_ctx
def tasks_retry(obj: Context, task_id: int) -> None:
    """Run a failed or cancelled task's job again, for the same slot."""
    new = obj.ledger().retry(task_id, obj.now())
    click.echo(f"queued task {new.id} to retry task {task_id}")


@tasks.command("cancel")
@click.argument("task_id", type=TASK_ID)
@pass_ctx
def tasks_cancel(obj: Context, task_id: int) -> None:
    """Cancel a waiting run, or stop a running one (its whole process tree)."""
    from edgeworker import recovery
    from edgeworker.db import worker_lock
    from edgeworker.errors import WorkerRunning

    task, name = obj.ledger().cancel_task(task_id, f"cancelled by {_who()}", obj.now())
    if task.status != "running":
        click.echo(f"cancelled task {task_id} (job {name}): it had not started")
        return
    try:
        # no worker of its name runs: end what the dead one left of this run on this host
        with worker_lock(obj.db_path, task.worker or obj.config.worker.worker_name()):
            ended = recovery.end_leftovers_of(obj.db_path, task.id, task.attempt)
        click.echo(f"cancelled task {task_id} (job {name}): no worker was running it; ended "
                   f"{ended} leftover process{'' if ended == 1 else 'es'}")
    except WorkerRunning:
        stopped = recovery.wait_stopped(obj.db_path, task.id, task.attempt)
        click.echo(f"cancelled task {task_id} (job {name}): "
                   + ("the worker stopped its processes" if stopped else
                      "the worker is stopping its processes"))


def _who() -> str:
    import pwd

    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
    return f"{user} (uid {uid})"


@tasks.command("prune")
@click.option("--older-than", required=True, metavar="DURATION",
              help="Delete finished tasks that finished longer ago than this, e.g. 7d.")
@pass_ctx
def tasks_prune(obj: Context, older_than: str) -> None:
    """Delete old finished tasks (the worker also does this, per `retention`)."""
    from datetime import timedelta

    from edgeworker.clock import utcnow
    from edgeworker.config import parse_duration

    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        raise ConfigError(f"--older-than: {exc}") from None
    if age > 100 * 365 * 86400:
        raise ConfigError(f"--older-than: {older_than!r} is more than 100 years")
    before = utcnow() - timedelta(seconds=age)
    ledger = obj.ledger()
    count = ledger.prune(before)
    ledger.prune_hook_runs(before)
    click.echo(f"pruned {count} finished task(s) older than {older_than}")


# -- serve --------------------------------------------------------------------------------------

@cli.command()
@click.option("--listen", default="127.0.0.1:8077", show_default=True, metavar="HOST:PORT",
              help="Address to serve on; beyond loopback only with --auth-file.")
@click.option("--auth-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Require HTTP basic auth: `user:hash` lines (see --hash-password).")
@click.option("--hash-password", "hash_user", metavar="USER",
              help="Print an auth-file line for USER (password from a prompt or stdin); no "
                   "server.")
@pass_ctx
def serve(obj: Context, listen: str, auth_file: Path | None, hash_user: str | None) -> None:
    """Serve a read-only status page (overview, jobs, runs, failures; ?format=json)."""
    # The page never speaks TLS: keep http.server's import of http.client from loading the ssl
    # module (1.4 MB of memory, a twentieth of the page's budget).
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    from edgeworker import logs, web

    try:
        web.parse_listen(listen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--listen'") from None

    if hash_user is not None:
        if not hash_user or ":" in hash_user or hash_user != hash_user.strip():
            raise ConfigError("--hash-password: a user name cannot be empty, contain ':' or "
                              "start or end with a space")
        password = click.prompt("Password", hide_input=True,
                                confirmation_prompt=sys.stdin.isatty(), err=True)
        click.echo(f"{hash_user}:{web.hash_password(password)}")
        return
    logs.setup(obj.config.worker.log_format, "debug" if obj.debug else "info")
    settings = obj.config.worker
    site = web.Site(obj.db_path, workers=settings.workers, busy_alert=settings.busy_alert)
    web.serve(web.make_server(site, listen, auth_file))


def main() -> None:
    try:
        cli(prog_name="edgeworker")
    except BrokenPipeError:  # raised outside a command, e.g. while flushing at the end
        if not reader_gone():
            raise
        output_closed()

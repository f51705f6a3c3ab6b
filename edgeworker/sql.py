"""The statements of the run path, named, written out once (tests/test_sql.py EXPLAINs each).

peewee builds a query's SQL text anew each time, which cost more CPU than SQLite took to run these.
The `tasks` table is the queue: a run waits as a `created` row with its `due_at`, and the one
partial index `tasks_queue` (unfinished rows, by due time) serves every statement here that
looks at waiting runs; running ones are this worker's claims, looked up by id (CLAIMABLE). A row
leaves that index only when it finishes (`finished_at` is set); a claim changes no indexed
column, so it writes one page.

`POSTGRESQL` holds the same statements for PostgreSQL (`statements_for` picks): psycopg2's
placeholders, no SQLite index hints, PostgreSQL's functions where SQLite's differ, and a claim in
two steps (see `edgeworker.postgres.claim`).
"""

from __future__ import annotations

import functools
import re

import peewee

from edgeworker.models import Job, Task


def columns(model) -> str:
    return ", ".join(field.column_name for field in model._meta.sorted_fields)


# A run another may take: created, its job enabled and not paused, no run of the job running, and
# (while cron jobs wait for a synchronised clock, :hold) not a cron job's scheduled run. The jobs
# running are found among the rows this worker claimed and has not seen finish, passed as :r0,
# :r1, ... (a few: one a thread): the database says which of them still run. Looking for
# `running` rows among all waiting ones instead cost a scan of the queue per claim.
CLAIMABLE = """FROM tasks t JOIN jobs j ON j.id = t.job_id
    WHERE t.finished_at IS NULL AND t.status = 'created' AND j.enabled AND NOT j.paused
      AND NOT (:hold AND j.cron IS NOT NULL AND t.origin = 'schedule' AND t.attempt = 0)
      AND t.job_id NOT IN (SELECT job_id FROM tasks WHERE id IN ({mine})
                           AND status = 'running' AND job_id IS NOT NULL)"""

TASK_COLUMNS = columns(Task)

# The database's clock in seconds since the epoch: leases are judged by it (workers.beat_at),
# never by a worker's own clock (a box without a real-time clock; hosts that disagree).
SERVER_NOW = "(julianday('now') - 2440587.5) * 86400.0"
PG_SERVER_NOW = "extract(epoch FROM now())"

STATEMENTS = {
    "job": f"SELECT {columns(Job)} FROM jobs WHERE id = ?",
    "task": f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?",
    "create": "INSERT INTO tasks (job_id, status, origin, scheduled_for, due_at, attempt, "
              "recovered_count, created_at) VALUES (?, 'created', ?, ?, ?, 0, 0, ?) RETURNING id",
    # Is a run due now? A read, so that a look that finds nothing takes no write lock.
    "due": f"SELECT 1 {CLAIMABLE} AND t.due_at <= :now LIMIT 1",
    # The claim: the next due, claimable run, in one statement.
    "claim": "UPDATE tasks SET status = 'running', attempt = attempt + 1, started_at = :now, "
             f"worker = :worker WHERE id = (SELECT t.id {CLAIMABLE} AND t.due_at <= :now "
             f"ORDER BY t.due_at, t.id LIMIT 1) RETURNING {TASK_COLUMNS}",
    # A claimed run given back before it started (its worker thread stops).
    "unclaim": "UPDATE tasks SET status = 'created', attempt = attempt - 1, started_at = NULL, "
               "worker = NULL WHERE id = ? AND status = 'running' AND attempt = ?",
    # When the next claimable run falls due: how long an idle worker thread sleeps.
    "next_due": f"SELECT min(t.due_at) {CLAIMABLE}",
    # running -> succeeded | failed | created (a retry), only if still this claim's.
    "finish": "UPDATE tasks SET status = ?, finished_at = ?, due_at = ?, exit_code = ?, "
              "error = ?, output = ? WHERE id = ? AND status = 'running' AND attempt = ?",
    "unreadable": "UPDATE tasks SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
    # A queued run (huey's enqueue or schedule for a row that exists) is due at a new time.
    "requeue": "UPDATE tasks SET due_at = ? WHERE id = ? AND status = 'created'",
    # running -> created for the attempt a dead worker was running (the seed's reset).
    # It is due at once (its due time has passed, unless a clock step moved the worker's time).
    "recover": "UPDATE tasks SET status = 'created', recovered_count = recovered_count + 1, "
               "recovering_attempt = attempt, due_at = min(due_at, ?) "
               "WHERE id = ? AND status = 'running' AND attempt = ?",
    # A job's unfinished runs are found through tasks_queue (named: without, SQLite walks the
    # job's whole history in tasks_job_id).
    "pending": f"SELECT {TASK_COLUMNS} FROM tasks INDEXED BY tasks_queue WHERE finished_at IS NULL "
               "AND job_id = ? AND origin = 'schedule' ORDER BY id DESC LIMIT 1",
    "cancel_waiting": "UPDATE tasks SET status = 'cancelled', finished_at = ?, error = ? "
                      "WHERE id IN (SELECT id FROM tasks INDEXED BY tasks_queue "
                      "WHERE finished_at IS NULL AND job_id = ? AND status = 'created')",
    # The clock's high-water mark: the newest times in the runs recorded since it was saved.
    "newest_times": "SELECT max(coalesce(finished_at, ''), coalesce(started_at, ''), created_at) "
                    "FROM tasks WHERE id > ? ORDER BY id DESC LIMIT 64",
    "last_id": "SELECT max(id) FROM tasks",
    "cancelled": "SELECT status, attempt, error FROM tasks WHERE id = ?",
    # Runs waiting: due now (ready) and later (scheduled).
    "depth": "SELECT coalesce(sum(due_at <= ?), 0), coalesce(sum(due_at > ?), 0) FROM tasks "
             "WHERE finished_at IS NULL AND status = 'created'",
    "waiting": f"SELECT {TASK_COLUMNS} FROM tasks WHERE finished_at IS NULL AND status = 'created' "
               "ORDER BY due_at, id LIMIT ?",
    "heartbeat": "UPDATE workers SET last_heartbeat = ?, "
                 f"beat_at = {SERVER_NOW} WHERE name = ?",
}

# The statements that look for claimable runs, by how many claimed rows they are given.
CLAIMING = ("due", "claim", "next_due")


@functools.cache
def claiming(name: str, mine: int) -> str:
    """`name` (one of CLAIMING) for `mine` claimed rows, :r0 ... :r{mine - 1}."""
    return STATEMENTS[name].replace("{mine}", ", ".join(f":r{i}" for i in range(mine)))


def _placeholders(sql: str) -> str:
    """SQLite's text in psycopg2's placeholders (`?` -> `%s`, `:name` -> `%(name)s`), without
    SQLite's index hints (PostgreSQL's planner takes the partial index by itself)."""
    sql = sql.replace(" INDEXED BY tasks_queue", "")
    return re.sub(r":(\w+)", r"%(\1)s", sql).replace("?", "%s")


# PostgreSQL, where several workers share the queue: running runs are looked for among all
# unfinished rows (any worker's), not among this worker's claims.
_PG_CLAIMABLE = _placeholders(CLAIMABLE.replace(
    "SELECT job_id FROM tasks WHERE id IN ({mine})",
    "SELECT job_id FROM tasks WHERE finished_at IS NULL"))
assert "{mine}" not in _PG_CLAIMABLE

POSTGRESQL = {name: _placeholders(text) for name, text in STATEMENTS.items()} | {
    "due": f"SELECT 1 {_PG_CLAIMABLE} AND t.due_at <= %(now)s LIMIT 1",
    "next_due": f"SELECT min(t.due_at) {_PG_CLAIMABLE}",
    # The claim, step 1: the next due, claimable run, locking it and its job's row. A claimer of
    # another run of the same job skips it while this transaction lasts (SKIP LOCKED), so
    # concurrent workers claim different jobs' runs without waiting for each other.
    "claim_pick": f"SELECT t.id {_PG_CLAIMABLE} AND t.due_at <= %(now)s "
                  "ORDER BY t.due_at, t.id LIMIT 1 FOR NO KEY UPDATE OF t, j SKIP LOCKED",
    # Step 2, in a new snapshot taken while holding the job's row: a run of the job claimed and
    # committed by another worker just before is seen now, and this claim takes nothing.
    "claim_take": "UPDATE tasks SET status = 'running', attempt = attempt + 1, "
                  "started_at = %(now)s, worker = %(worker)s WHERE id = %(id)s "
                  "AND status = 'created' AND finished_at IS NULL AND NOT EXISTS ("
                  "SELECT 1 FROM tasks r WHERE r.job_id = tasks.job_id "
                  "AND r.finished_at IS NULL AND r.status = 'running') "
                  f"RETURNING {TASK_COLUMNS}",
    "recover": "UPDATE tasks SET status = 'created', recovered_count = recovered_count + 1, "
               "recovering_attempt = attempt, due_at = least(due_at, %s) "
               "WHERE id = %s AND status = 'running' AND attempt = %s",
    "depth": "SELECT count(*) FILTER (WHERE due_at <= %s), count(*) FILTER (WHERE due_at > %s) "
             "FROM tasks WHERE finished_at IS NULL AND status = 'created'",
    # A limit of -1 (SQLite's "no limit") is NULL to PostgreSQL.
    "waiting": f"SELECT {TASK_COLUMNS} FROM tasks WHERE finished_at IS NULL "
               "AND status = 'created' ORDER BY due_at, id LIMIT nullif(%s, -1)",
    "heartbeat": f"UPDATE workers SET last_heartbeat = %s, beat_at = {PG_SERVER_NOW} "
                 "WHERE name = %s",
    # Names under which runs are recorded running whose worker holds no lease now, by the
    # server's clock: its heartbeat is older than its lease, or it has none (no row; a row copied
    # from a SQLite file or written before leases).
    "expired": "SELECT DISTINCT t.worker FROM tasks t WHERE t.finished_at IS NULL "
               "AND t.status = 'running' AND t.worker <> %(worker)s AND NOT EXISTS ("
               "SELECT 1 FROM workers w WHERE w.name = t.worker "
               f"AND w.beat_at + w.lease_seconds > {PG_SERVER_NOW})",
    "newest_times": "SELECT greatest(coalesce(finished_at, ''), coalesce(started_at, ''), "
                    "created_at) FROM tasks WHERE id > %s ORDER BY id DESC LIMIT 64",
}
del POSTGRESQL["claim"]


def server_now(database: peewee.Database) -> str:
    return PG_SERVER_NOW if isinstance(database, peewee.PostgresqlDatabase) else SERVER_NOW


def statements_for(database: peewee.Database) -> dict[str, str]:
    """The run path's statements in the database's dialect."""
    return POSTGRESQL if isinstance(database, peewee.PostgresqlDatabase) else STATEMENTS

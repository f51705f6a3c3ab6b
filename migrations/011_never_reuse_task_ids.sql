-- Task ids are never reused: EDGEWORKER_TASK_ID is the idempotency key a task's side effects are
-- keyed on, and without AUTOINCREMENT SQLite hands a pruned highest id out again.
-- SQLite's table-rebuild procedure (https://www.sqlite.org/lang_altertable.html#otheralter), as in
-- 003: the runner disables foreign keys around it and runs PRAGMA foreign_key_check before commit.
-- Copying the rows into the AUTOINCREMENT table seeds sqlite_sequence with the highest id, and
-- the rename carries that row over to `tasks`. The cost: each new task also updates
-- sqlite_sequence, one more page in its commit (bench/throughput.py, 500 manual runs: 24.8 ->
-- 25.9 KiB written per task).
CREATE TABLE tasks_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    status TEXT NOT NULL DEFAULT 'created'
        CHECK (status IN ('created', 'running', 'succeeded', 'failed', 'cancelled')),
    scheduled_for TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    recovered_count INTEGER NOT NULL DEFAULT 0 CHECK (recovered_count >= 0),
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    exit_code INTEGER,
    error TEXT,
    output TEXT,
    worker TEXT,
    origin TEXT NOT NULL DEFAULT 'schedule' CHECK (origin IN ('schedule', 'manual')),
    due_at TEXT
);

INSERT INTO tasks_new (id, job_id, status, scheduled_for, attempt, recovered_count, created_at,
                       started_at, finished_at, exit_code, error, output, worker, origin, due_at)
SELECT id, job_id, status, scheduled_for, attempt, recovered_count, created_at,
       started_at, finished_at, exit_code, error, output, worker, origin, due_at
FROM tasks;

DROP TABLE tasks;

ALTER TABLE tasks_new RENAME TO tasks;

CREATE INDEX tasks_job_id ON tasks (job_id, id);

CREATE INDEX tasks_unfinished ON tasks (job_id) WHERE status IN ('created', 'running');

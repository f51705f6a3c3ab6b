-- The tasks table is huey's queue (edgeworker.queue.TaskStorage): a run waits as a `created` row
-- with its due time, and huey's message and schedule tables, a second copy of every waiting run,
-- go. Unfinished rows are those without `finished_at`; the one partial index tasks_queue holds
-- them by due time, and a claim changes none of its columns (one page per claim).
--
-- Task ids are still never reused (EDGEWORKER_TASK_ID is the idempotency key a task's side effects
-- are keyed on), without AUTOINCREMENT, whose sqlite_sequence cost a page per new run: retention
-- never prunes the highest id (Ledger.prune), so SQLite's max(id) + 1 never goes back. Where the
-- highest ids were pruned already, a cancelled placeholder row keeps the highest id handed out.
--
-- SQLite's table-rebuild procedure, as in 011; the runner disables foreign keys around it and runs
-- PRAGMA foreign_key_check before commit.
CREATE TABLE tasks_new (
    id INTEGER PRIMARY KEY,
    job_id INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    status TEXT NOT NULL DEFAULT 'created'
        CHECK (status IN ('created', 'running', 'succeeded', 'failed', 'cancelled')),
    origin TEXT NOT NULL DEFAULT 'schedule' CHECK (origin IN ('schedule', 'manual')),
    scheduled_for TEXT NOT NULL,
    due_at TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    recovered_count INTEGER NOT NULL DEFAULT 0 CHECK (recovered_count >= 0),
    recovering_attempt INTEGER,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    exit_code INTEGER,
    error TEXT,
    output TEXT,
    worker TEXT,
    job_name TEXT,
    CHECK ((finished_at IS NULL) = (status IN ('created', 'running')))
);

INSERT INTO tasks_new (id, job_id, status, origin, scheduled_for, due_at, attempt, recovered_count,
                       created_at, started_at, finished_at, exit_code, error, output, worker,
                       job_name)
SELECT id, job_id, status, origin, scheduled_for, coalesce(due_at, scheduled_for), attempt,
       recovered_count, created_at, started_at,
       CASE WHEN status IN ('created', 'running') THEN NULL
            ELSE coalesce(finished_at, started_at, created_at) END,
       exit_code, error, output, worker, job_name
FROM tasks;

-- A scheduled run's message was due at max(its due time, when it was created): a catch-up run
-- queued behind work that fell due before it. The row's due time is now that time.
UPDATE tasks_new SET due_at = max(due_at, created_at)
WHERE status = 'created' AND origin = 'schedule' AND attempt = 0;

-- Messages that named no task (the seed's "create the row at the claim") become rows, due now.
-- Recovery messages need nothing: their rows are still `running`, and the next start recovers
-- them. Every other message named a `created` row, which is now queued by being there.
INSERT INTO tasks_new (job_id, status, origin, scheduled_for, due_at, created_at)
SELECT job_id, 'created', 'manual', now, now, now
FROM (SELECT CAST(json_extract(CAST(data AS TEXT), '$.args[0].job_id') AS INTEGER) AS job_id,
             strftime('%Y-%m-%dT%H:%M:%S', 'now') || '.000000Z' AS now
      FROM (SELECT id, data FROM huey_task UNION ALL SELECT id, data FROM huey_schedule)
      WHERE json_valid(CAST(data AS TEXT))
        AND json_extract(CAST(data AS TEXT), '$.args[0].task_id') IS NULL)
WHERE job_id IN (SELECT id FROM jobs);

INSERT INTO tasks_new (id, status, origin, scheduled_for, due_at, created_at, finished_at, error)
SELECT seq, 'cancelled', 'manual', now, now, now, now,
       'placeholder: keeps task ids below it from being handed out again'
FROM (SELECT seq, strftime('%Y-%m-%dT%H:%M:%S', 'now') || '.000000Z' AS now
      FROM sqlite_sequence WHERE name = 'tasks')
WHERE seq > (SELECT coalesce(max(id), 0) FROM tasks_new);

DROP TABLE tasks;

ALTER TABLE tasks_new RENAME TO tasks;

CREATE INDEX tasks_job_id ON tasks (job_id, id);

CREATE INDEX tasks_queue ON tasks (due_at) WHERE finished_at IS NULL;

DROP TABLE huey_task;

DROP TABLE huey_schedule;

DROP TABLE huey_kv;

DROP TABLE huey_counter;

-- Nothing is re-enqueued at a start any more: a waiting run cannot lose its message.
ALTER TABLE recoveries DROP COLUMN requeued;

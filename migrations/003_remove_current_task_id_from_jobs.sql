-- Tasks are no longer tracked through jobs.current_task_id: recovery finds them by status.
-- SQLite's table-rebuild procedure (https://www.sqlite.org/lang_altertable.html#otheralter)
-- rather than ALTER TABLE ... DROP COLUMN, so that it also runs on SQLite older than 3.35.
-- The runner disables foreign keys around it and runs PRAGMA foreign_key_check before commit.
CREATE TABLE jobs_new (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('command', 'callable')),
    target TEXT NOT NULL,
    every_seconds REAL CHECK (every_seconds > 0),
    cron TEXT,
    timeout_seconds REAL CHECK (timeout_seconds > 0),
    max_attempts INTEGER NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    retry_delay_seconds REAL NOT NULL DEFAULT 10 CHECK (retry_delay_seconds >= 0),
    enabled INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    CHECK ((every_seconds IS NULL) != (cron IS NULL))
);

INSERT INTO jobs_new (id, name, kind, target, every_seconds, cron, timeout_seconds,
                      max_attempts, retry_delay_seconds, enabled, created_at, updated_at)
SELECT id, name, kind, target, every_seconds, cron, timeout_seconds,
       max_attempts, retry_delay_seconds, enabled, created_at, updated_at
FROM jobs;

DROP TABLE jobs;

ALTER TABLE jobs_new RENAME TO jobs;

-- The jobs table as the earlier system had it: each job pointed at its current task.
CREATE TABLE jobs (
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
    current_task_id INTEGER,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    CHECK ((every_seconds IS NULL) != (cron IS NULL))
);

CREATE INDEX jobs_current_task_id ON jobs (current_task_id);

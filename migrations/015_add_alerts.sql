-- Alerts: a job's hooks (commands run after a run's outcome, argv as a shlex line), its
-- dead-man's-switch ping URL and its "gone quiet" grace. NULL: the [worker] default.
ALTER TABLE jobs ADD COLUMN on_failure TEXT;
ALTER TABLE jobs ADD COLUMN on_success TEXT;
ALTER TABLE jobs ADD COLUMN on_retry TEXT;
ALTER TABLE jobs ADD COLUMN ping_url TEXT;
ALTER TABLE jobs ADD COLUMN alert_after_seconds REAL;
-- Pings that could not be delivered when sent, oldest first; delivered ones are never written.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id INTEGER,
    job_name TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    last_error TEXT
);
CREATE INDEX outbox_task_id ON outbox (task_id);
-- What a hook command did, and what became of a ping that had to wait in the outbox.
CREATE TABLE hook_runs (
    id INTEGER PRIMARY KEY,
    task_id INTEGER,
    job_name TEXT NOT NULL,
    hook TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    error TEXT,
    output TEXT,
    finished_at TEXT NOT NULL
);
CREATE INDEX hook_runs_task_id ON hook_runs (task_id);

-- One row per run of a job.
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
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
    worker TEXT
);

CREATE INDEX tasks_job_id ON tasks (job_id, id);

-- Small and hot: only unfinished tasks are in it, so recovery and scheduling never scan history.
CREATE INDEX tasks_unfinished ON tasks (status) WHERE status IN ('created', 'running');

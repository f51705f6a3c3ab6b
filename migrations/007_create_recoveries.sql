-- What each start-up recovery did, so that `edgeworker status` can show the last one.
CREATE TABLE recoveries (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    duration_ms REAL NOT NULL,
    worker TEXT NOT NULL,
    recovered INTEGER NOT NULL,  -- running tasks of a dead worker, queued to run again
    requeued INTEGER NOT NULL,   -- created tasks whose queue message was lost, queued again
    failed INTEGER NOT NULL,     -- interrupted tasks with no attempt left
    cancelled INTEGER NOT NULL,  -- tasks whose job is gone or paused, or superseded slots
    scheduled INTEGER NOT NULL   -- jobs given their next run (catch-up applied)
);

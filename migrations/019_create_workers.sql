-- The workers that have run on this database, one row a life (tasks.worker names it): where it
-- runs, when it started, its last heartbeat ([worker] heartbeat) and when it stopped gracefully.
-- A row that never stopped and whose heartbeat went stale is a worker that died or went away.
CREATE TABLE workers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    last_heartbeat TEXT NOT NULL,
    heartbeat_seconds REAL,
    version TEXT NOT NULL,
    stopped_at TEXT
);

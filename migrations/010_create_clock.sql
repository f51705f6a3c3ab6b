-- The worker's clock, kept across restarts (one row): see edgeworker/clock.py and docs/time.md.
CREATE TABLE clock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    high_water TEXT NOT NULL,     -- the newest time the worker has used; no run is dated earlier
    high_water_task INTEGER NOT NULL DEFAULT 0,  -- the newest task id when it was saved
    last_step_at TEXT,            -- when the wall clock last stepped (the worker's time then)
    last_step_seconds REAL,       -- by how much (negative: back)
    last_step_moved REAL,         -- how far the worker's time moved with it (0: it did not follow)
    forward_at TEXT,              -- when the worker's time last jumped forward with the clock
    forward_seconds REAL NOT NULL DEFAULT 0,  -- by how much (summed while retention remembers)
    held_since TEXT               -- cron jobs wait for a synchronised clock since then, or NULL
);

-- Workers by a stable name (one row a name, [worker] name), and leases: a worker holds the runs
-- recorded under its name while its heartbeat, dated by the database server's clock (beat_at,
-- seconds since the epoch), is younger than its lease. SQLite has one worker a file and no lease.
ALTER TABLE workers ADD COLUMN boot_id TEXT;
ALTER TABLE workers ADD COLUMN beat_at REAL;
ALTER TABLE workers ADD COLUMN lease_seconds REAL;
-- Who recovered what: the workers whose running tasks a recovery took, and those tasks' ids.
ALTER TABLE recoveries ADD COLUMN recovered_from TEXT;
ALTER TABLE recoveries ADD COLUMN task_ids TEXT;

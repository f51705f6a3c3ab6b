-- Workers by a stable name, and leases (migrations/020_worker_leases.sql).
ALTER TABLE workers ADD COLUMN boot_id TEXT;
ALTER TABLE workers ADD COLUMN beat_at DOUBLE PRECISION;
ALTER TABLE workers ADD COLUMN lease_seconds DOUBLE PRECISION;
ALTER TABLE recoveries ADD COLUMN recovered_from TEXT;
ALTER TABLE recoveries ADD COLUMN task_ids TEXT;

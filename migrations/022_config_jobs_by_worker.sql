-- Config jobs on a database shared by workers with config files of their own (PostgreSQL):
-- `defined_by` is the worker names whose config has the job, as a sorted JSON array (NULL: none
-- known, as for every row made before this migration and on SQLite). A sync removes a config
-- job only when no other name's config has it (edgeworker/jobs.py, sync_jobs).
ALTER TABLE jobs ADD COLUMN defined_by TEXT;

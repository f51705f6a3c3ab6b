-- Jobs pinned to workers by tag: `run_on` is a job's tags as a sorted JSON array of strings
-- (NULL: any worker), `tags` a worker's (NULL: none). A worker claims a job's runs when the job
-- has no run_on or the two share a tag; one without tags claims only jobs without run_on.
--
-- PostgreSQL also gets a unique key on a job's waiting scheduled run
-- (migrations/postgresql/021_pin_jobs_to_workers.sql), so that workers that finish or recover at
-- the same moment create a job's next run once. SQLite needs none: one worker per file, behind
-- the single-instance lock, and recovery plans inside its write transaction; the index would
-- cost a page at every scheduled run's finish (issue 11: bytes written per run).
ALTER TABLE jobs ADD COLUMN run_on TEXT;

ALTER TABLE workers ADD COLUMN tags TEXT;

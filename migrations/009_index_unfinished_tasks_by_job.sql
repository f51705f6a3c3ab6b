-- Key the partial index of unfinished tasks by job, not by status: a claim (created -> running)
-- then leaves the index untouched, one page write less per run, and "is another run of this job
-- running?" finds the job's one or two unfinished tasks directly.
DROP INDEX tasks_unfinished;
CREATE INDEX tasks_unfinished ON tasks (job_id) WHERE status IN ('created', 'running');

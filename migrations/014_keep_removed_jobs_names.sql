-- The name of a removed job, kept with its history: filled for a job's tasks when the job is
-- deleted (its job_id then becomes NULL), and NULL for every other task, so it costs no byte
-- per run.
ALTER TABLE tasks ADD COLUMN job_name TEXT;

-- Jobs pinned to workers by tag (migrations/021_pin_jobs_to_workers.sql), and a unique key that
-- makes a job's next scheduled run once, however many workers finish or recover at the same
-- moment: the later INSERT ... ON CONFLICT DO NOTHING finds it there.
--
-- The key is the job, over its waiting or running scheduled run (origin 'schedule', unfinished):
-- an active job has exactly one (docs/recovery.md), a finish ends it in the transaction that
-- makes the next, a retry or a recovery reuses the row, a clock step moves it. A key on job and
-- slot would not do: two workers that plan a moment apart (across a slot boundary, or one after
-- the other's commit) make different slots, and the job would run twice as often. Finished rows
-- are not in the key: history may repeat a slot, legitimately (after the clock steps back, an
-- interval job's slots that already ran are run again).
--
-- Duplicates already here (none is expected: one worker ran per database until now) are
-- cancelled before the key is made: the running one, else the earliest slot, is kept; the rows
-- stay, with the reason.
ALTER TABLE jobs ADD COLUMN run_on TEXT;

ALTER TABLE workers ADD COLUMN tags TEXT;

UPDATE tasks SET status = 'cancelled', error = duplicates.reason,
    finished_at = to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
FROM (SELECT id, 'a second scheduled run of the job: task ' || kept
             || ' is its next run (migration 021)' AS reason
      FROM (SELECT id, row_number() OVER job AS n, first_value(id) OVER job AS kept
            FROM tasks WHERE origin = 'schedule' AND finished_at IS NULL AND job_id IS NOT NULL
            WINDOW job AS (PARTITION BY job_id
                           ORDER BY status = 'running' DESC, scheduled_for, id)) ranked
      WHERE n > 1) duplicates
WHERE tasks.id = duplicates.id;

CREATE UNIQUE INDEX tasks_next_run ON tasks (job_id)
    WHERE origin = 'schedule' AND finished_at IS NULL;

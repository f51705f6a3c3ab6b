-- Jobs pinned to workers by tag (migrations/021_pin_jobs_to_workers.sql), and a unique key on a
-- scheduled run's job and slot: several workers that finish or recover at the same moment
-- create a job's next run once (the later INSERT ... ON CONFLICT DO NOTHING finds it there).
--
-- The key holds unfinished rows only. History may repeat a slot, legitimately: after the clock
-- steps back, an interval job's slots that already ran are run again; the guarantee is that a
-- slot never waits or runs twice at once. Unfinished duplicates already here (none is expected:
-- until now one worker ran per database) are cancelled, the oldest one (a running one first)
-- kept; their rows stay, with the reason.
ALTER TABLE jobs ADD COLUMN run_on TEXT;

ALTER TABLE workers ADD COLUMN tags TEXT;

UPDATE tasks SET status = 'cancelled', error = duplicates.reason,
    finished_at = to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
FROM (SELECT id, 'a second run of the same slot: task ' || kept || ' is its run (migration 021)'
             AS reason
      FROM (SELECT id, row_number() OVER slot AS n, first_value(id) OVER slot AS kept
            FROM tasks WHERE origin = 'schedule' AND finished_at IS NULL
            WINDOW slot AS (PARTITION BY job_id, scheduled_for
                            ORDER BY status = 'running' DESC, id)) ranked
      WHERE n > 1) duplicates
WHERE tasks.id = duplicates.id;

CREATE UNIQUE INDEX tasks_slot ON tasks (job_id, scheduled_for)
    WHERE origin = 'schedule' AND finished_at IS NULL;

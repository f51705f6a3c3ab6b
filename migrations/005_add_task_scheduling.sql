-- 'schedule': a slot of the job's schedule; 'manual': `jobs run` or `tasks retry`.
ALTER TABLE tasks ADD COLUMN origin TEXT NOT NULL DEFAULT 'schedule'
    CHECK (origin IN ('schedule', 'manual'));
-- When the task may start: its slot plus jitter, or the back-off of a retry.
ALTER TABLE tasks ADD COLUMN due_at TEXT;
UPDATE tasks SET due_at = scheduled_for;

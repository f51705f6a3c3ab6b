-- A callable's `isolate` gets a column of its own (it was kept in `shell`, which only a command
-- uses).
ALTER TABLE jobs ADD COLUMN isolate INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET isolate = shell, shell = 0 WHERE kind = 'callable';

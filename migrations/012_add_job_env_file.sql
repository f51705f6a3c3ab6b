-- A job's secrets live in a file of KEY=VALUE lines (mode 0600 or 0640), read at each run: the
-- database holds its path only, never the values.
ALTER TABLE jobs ADD COLUMN env_file TEXT;

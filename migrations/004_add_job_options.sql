-- What edgeworker's jobs need beyond the earlier system's.
ALTER TABLE jobs ADD COLUMN shell INTEGER NOT NULL DEFAULT 0 CHECK (shell IN (0, 1));
ALTER TABLE jobs ADD COLUMN timezone TEXT;
ALTER TABLE jobs ADD COLUMN catch_up TEXT NOT NULL DEFAULT 'skip'
    CHECK (catch_up IN ('skip', 'once', 'all'));
ALTER TABLE jobs ADD COLUMN catch_up_limit INTEGER NOT NULL DEFAULT 10 CHECK (catch_up_limit >= 1);
ALTER TABLE jobs ADD COLUMN jitter_seconds REAL NOT NULL DEFAULT 0 CHECK (jitter_seconds >= 0);
ALTER TABLE jobs ADD COLUMN env TEXT NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN cwd TEXT;
-- 'config': synced from the TOML file; 'cli': added with `edgeworker jobs add`.
ALTER TABLE jobs ADD COLUMN source TEXT NOT NULL DEFAULT 'cli' CHECK (source IN ('config', 'cli'));
-- An operator's pause survives config syncs, which own `enabled`.
ALTER TABLE jobs ADD COLUMN paused INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1));

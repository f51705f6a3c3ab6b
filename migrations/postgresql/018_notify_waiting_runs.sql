-- Idle workers LISTEN on the channel `edgeworker` (edgeworker.postgres.NotifyWatch) and are woken
-- when a change to tasks or jobs commits (a new run, a retry, a finished run that frees its job,
-- a resumed job), as SQLite's workers are by a write to the WAL: one notification a statement,
-- and PostgreSQL delivers one for a transaction however many it sent.
CREATE FUNCTION edgeworker_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('edgeworker', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_notify AFTER INSERT OR UPDATE OR DELETE ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION edgeworker_notify();

CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OR DELETE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION edgeworker_notify();

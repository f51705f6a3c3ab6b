"""The errors a user can act on. The CLI maps each class to an exit code, once, in one place."""


class EdgeworkerError(Exception):
    """An error the user can act on: printed as one line `Error: ...`, exit code 1."""

    exit_code = 1


class ConfigError(EdgeworkerError):
    """The TOML file or a command-line option is wrong."""


class DatabaseError(EdgeworkerError):
    """The database file cannot be opened, read or written."""


class MigrationError(EdgeworkerError):
    """A migration is missing, changed, or failed."""


class PendingMigrations(EdgeworkerError):
    """The database needs `edgeworker migrate` before this command can run."""


class NotFound(EdgeworkerError):
    """A job or task named on the command line does not exist."""


class Conflict(EdgeworkerError):
    """The request contradicts the current state (a duplicate name, a task not retryable)."""


class WorkerRunning(EdgeworkerError):
    """Another worker holds the database's single-instance lock."""


class ScheduleError(ConfigError):
    """A job's schedule gives no run time (a cron expression that never fires, a date out of
    range): the job cannot be scheduled until its settings change."""


def explain(exc: Exception, db_path) -> tuple[str, int]:
    """The CLI's error boundary: the line it prints after `Error: ` for an error, and the exit
    code. `db_path()` names the database for an error from SQLite that says nothing of it."""
    if isinstance(exc, EdgeworkerError):
        return str(exc), exc.exit_code
    return (_translate(exc, db_path) or f"internal error: {type(exc).__name__}: {exc} (run with "
                                        "--debug for the traceback)"), 1


def _translate(exc: Exception, db_path) -> str | None:
    """Database errors raised outside an explicit translation still read as one line."""
    import sqlite3

    import peewee

    if isinstance(exc, (peewee.DatabaseError, sqlite3.DatabaseError)):
        from edgeworker.db import translate_errors

        try:
            with translate_errors(db_path()):
                raise exc
        except DatabaseError as translated:
            return str(translated)
        except Exception:
            return None
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    return None

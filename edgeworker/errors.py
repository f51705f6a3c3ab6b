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

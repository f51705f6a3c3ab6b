"""How many write transactions a database committed since a point: SQLite's commit frames in its
WAL (tests/waltools.py), PostgreSQL's transaction ids handed out (one per writing transaction)."""

from __future__ import annotations

import peewee
from waltools import reset_wal, wal_commits


class Commits:
    def __init__(self, database: peewee.Database):
        self.database = database
        self.postgres = isinstance(database, peewee.PostgresqlDatabase)
        if self.postgres:
            self.start = self._xid()
        else:
            reset_wal(database)

    def _xid(self) -> int:
        # Asking takes an id itself: a transaction of its own, outside any other.
        return int(self.database.execute_sql("SELECT pg_current_xact_id()::text").fetchone()[0])

    def __call__(self) -> int:
        if self.postgres:
            return self._xid() - self.start - 1
        return wal_commits(self.database.database)

"""Django's SQLite backend for processes that share one file (web, worker, beat, commands).

SQLite lets one writer in at a time, and a writer that finds the file locked polls: SQLite's busy
handler sleeps 1, 2, 5, 10, 15, 20… ms between tries. With two worker processes and the web
writing several times per invocation, those sleeps were where the embedded mode's time went (a
burst of 300 slept 1.9 s in the workers). Here every writer first takes an exclusive `flock` on
`<database>.writers` — a blocking wait, woken by the kernel the moment the writer before it lets
go — and only then asks SQLite for its write lock, which is then free: a write transaction
(`BEGIN IMMEDIATE`, settings) holds the lock file from BEGIN to COMMIT or ROLLBACK, a write
statement in autocommit for that statement. SQLite's own locking still decides what is correct;
the lock file only decides who goes next. `flock` locks belong to the open file, so threads of one
process (the web's) queue as processes do; each connection opens its own.

Each connection also turns on the write-ahead log (readers never wait for the writer, nor it for
them) with `synchronous=FULL`, so a commit is on disk before it returns: an accepted dispatch or
a stored outcome survives a power cut, as on Postgres.
"""

from __future__ import annotations

import fcntl
import os

from django.db.backends.sqlite3 import base

PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL")
READS = ("SELECT", "PRAGMA", "EXPLAIN")


class DatabaseWrapper(base.DatabaseWrapper):
    _writers: int | None = None  # the lock file, open per connection
    _writing = False

    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        for pragma in PRAGMAS:
            connection.execute(pragma)
        if not self.is_in_memory_db():
            self._writers = os.open(f"{self.settings_dict['NAME']}.writers",
                                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return connection

    def create_cursor(self, name=None):
        return self.connection.cursor(factory=self._cursor_class())

    def _cursor_class(self):
        wrapper = self

        class Cursor(base.SQLiteCursorWrapper):
            def execute(self, query, params=None):
                with wrapper.writing(query):
                    return super().execute(query, params)

            def executemany(self, query, param_list):
                with wrapper.writing(query):
                    return super().executemany(query, param_list)

        return Cursor

    def writing(self, query: str):
        """The lock file around one statement run in autocommit that may write; a transaction
        holds it already (or needs none: a read)."""
        if self._writing or query.lstrip()[:7].upper().startswith(READS):
            return _NOTHING
        return _Statement(self)

    def _lock(self) -> None:
        if self._writers is not None and not self._writing:
            fcntl.flock(self._writers, fcntl.LOCK_EX)
            self._writing = True

    def _unlock(self) -> None:
        if self._writing:
            self._writing = False
            fcntl.flock(self._writers, fcntl.LOCK_UN)

    def _start_transaction_under_autocommit(self):
        self._lock()
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._unlock()
            raise

    def _commit(self):
        try:
            super()._commit()
        finally:
            self._unlock()

    def _rollback(self):
        try:
            super()._rollback()
        finally:
            self._unlock()

    def _close(self):
        try:
            super()._close()
        finally:
            self._unlock()
            if self._writers is not None:
                os.close(self._writers)
                self._writers = None


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class _Statement:
    """The lock file for one statement outside a transaction."""

    def __init__(self, wrapper: DatabaseWrapper) -> None:
        self.wrapper = wrapper

    def __enter__(self):
        self.wrapper._lock()

    def __exit__(self, *exc):
        if self.wrapper.autocommit:  # else a transaction began: COMMIT or ROLLBACK lets go
            self.wrapper._unlock()
        return False


_NOTHING = _Nothing()

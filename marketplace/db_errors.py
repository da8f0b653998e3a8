"""Database errors classified by their cause (SQLSTATE, SQLite's error code, the connection's
state), never by message text. Imports nothing from the apps: every layer may use it.

- transient: a deadlock (40P01) or serialization failure (40001), SQLite busy/locked. The
  transaction was rolled back; running it again is safe. Tasks retry them (`retry_transient`);
  a request that still meets one after its own retries answers 503 "database busy".
- unavailable: the connection is lost or refused (class 08, 57P01-57P03 server shutting down,
  53300 too many connections, a closed connection, SQLite cannot open/read its file): 503
  "database unavailable" with Retry-After.
- anything else (e.g. SQLite's "integer overflow" from a value no check caught) is a bug that
  input triggered, not an outage: it is re-raised and logged as a 500, so it gets fixed
  instead of hiding behind a 503.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_SQLSTATES = {"40P01", "40001"}
UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}
# sqlite3 result codes (primary, the low byte of the extended code).
SQLITE_BUSY, SQLITE_LOCKED = 5, 6
SQLITE_UNAVAILABLE = {10, 11, 13, 14, 26}  # IOERR, CORRUPT, FULL, CANTOPEN, NOTADB


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (psycopg 3 `sqlstate`, psycopg 2 `pgcode`), if any."""
    for e in _causes(exc):
        code = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if code:
            return code
    return None


def constraint_name(exc: BaseException) -> str | None:
    """The name of the constraint a database error violated (PostgreSQL's diagnostics), or
    None (SQLite reports no names)."""
    for e in _causes(exc):
        diag = getattr(e, "diag", None)
        if diag is not None and getattr(diag, "constraint_name", None):
            return diag.constraint_name
    return None


def _sqlite_code(exc: BaseException) -> int | None:
    for e in _causes(exc):
        code = getattr(e, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF
    return None


def is_transient(exc: BaseException) -> bool:
    if not isinstance(exc, OperationalError):
        return False
    return sqlstate(exc) in TRANSIENT_SQLSTATES or _sqlite_code(exc) in (SQLITE_BUSY, SQLITE_LOCKED)


def is_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or the connection was lost."""
    if isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    state = sqlstate(exc)
    if state is not None:
        return state.startswith("08") or state in UNAVAILABLE_SQLSTATES
    code = _sqlite_code(exc)
    if code is not None:
        return code in SQLITE_UNAVAILABLE
    # The server never answered (refused, dropped, timed out): psycopg then has no SQLSTATE,
    # because only a server's error report carries one.
    return connection.vendor == "postgresql"


def retry_transient(fn: Callable[[], T], *, attempts: int = 5, base_delay: float = 0.05) -> T:
    """Run `fn` (which runs its own transactions), again after a deadlock or serialization
    failure, at most `attempts` times, sleeping base x 2^n with full jitter between tries, so
    that two retried transactions do not collide again in lockstep."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except OperationalError as exc:
            if not is_transient(exc) or attempt == attempts or not connection.get_autocommit():
                raise
            delay = random.uniform(0, base_delay * 2 ** (attempt - 1))
            log.warning("transient database error (%s), retry %d in %.3fs", sqlstate(exc), attempt, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")

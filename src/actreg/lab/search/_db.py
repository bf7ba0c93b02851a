"""The database side of :mod:`actreg.lab.search`: storage URLs, a cross-process lock, storage.

Storage URLs carry passwords; :func:`safe_url` is the one place that masks them (in logs,
errors, ``search.md`` and ``search.json``). It works on the text, not on a parser's
reading, because it must also mask URLs that no parser accepts.

Every change of a trial's state (enqueue, claim, finish, fail-as-stale) happens while a
lock shared by every worker of the search is held, so no grid point is claimed twice:

* SQLite: ``flock`` on ``DB_FILE.lock`` (one machine). The database is put in WAL mode and
  every write transaction starts with ``BEGIN IMMEDIATE`` and waits up to two minutes for
  the write lock, so concurrent workers wait instead of failing with "database is locked".
* PostgreSQL: a session advisory lock (``pg_advisory_lock``). The server releases it when
  a worker's connection dies, even after SIGKILL; waiting for it times out after
  ``LOCK_TIMEOUT`` (then retried as an outage), so a lock held by a session the server has
  not yet seen die cannot stall a worker for good.

Once a worker has reached the storage, every call it makes rides out outages
(:mod:`~actreg.lab.search._retry`); the first connection fails at once, so a wrong host or
password is reported without a wait. SQLite is a local file: no outages, no retries.

Optuna and SQLAlchemy are imported only when a function here is called.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sqlite3
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from actreg._errors import ActregError
from actreg.lab.search._retry import Outage, transient

__all__ = ["Store", "check_storage_url", "safe_url"]

BACKENDS = ("sqlite", "postgresql")
SQLITE_TIMEOUT = 120.0  # seconds a SQLite writer waits for the write lock
LOCK_TIMEOUT = "60s"  # PostgreSQL: longest wait for the search-wide lock before a retry
# libpq: notice a dead server within seconds, not after the system's TCP timeout (hours)
PG_CONNECT = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}

T = TypeVar("T")

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_SECRET_QUERY = re.compile(
    r"(?i)([?&;](?:password|passwd|pwd|secret|token|api_key|apikey|access_key)=)[^&;#]*"
)


def _userinfo(url: str) -> tuple[int, int] | None:
    """Where the userinfo (``user:password``) of ``url`` lies, as (start, end of "@").

    The authority starts after ``//`` (or at the start when there is none); the userinfo
    ends at the *last* "@" before the first "?" or "#" that follows the first "@", so a
    password may hold unescaped ``@ : / %``. An empty authority (``sqlite:///path``) has none.
    """
    start = url.find("//")
    start = 0 if start < 0 else start + 2
    if url.startswith("/", start):
        return None
    first = url.find("@", start)
    if first < 0:
        return None
    stops = [i for i in (url.find("?", first), url.find("#", first)) if i >= 0]
    end = url.rfind("@", first, min(stops) if stops else len(url))
    return start, end


def _parses(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        return False
    return True


def safe_url(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``***``.

    Always a parsable URL (:func:`urllib.parse.urlsplit` accepts it) without the password,
    even for malformed URLs and passwords holding ``@ : / % ? #``: when the password's
    end is ambiguous, more is masked rather than less, and a result that would not parse
    becomes ``SCHEME://***``.

    Raises:
        ActregError: when ``url`` is not a string.

    Example:
        >>> safe_url("postgresql://actreg:hunter2@db:5432/runs")
        'postgresql://actreg:***@db:5432/runs'
        >>> safe_url("postgresql://actreg:p@ss:w/rd@db/runs?sslmode=require")
        'postgresql://actreg:***@db/runs?sslmode=require'
        >>> safe_url("postgresql//actreg:hunter2@db/runs")  # malformed: still masked
        'postgresql//actreg:***@db/runs'
    """
    if not isinstance(url, str):
        raise ActregError(f"safe_url needs a string, got {type(url).__name__}")
    masked = url
    where = _userinfo(url)
    if where is not None:
        start, end = where
        user, colon, _ = url[start:end].partition(":")
        if colon:
            user = quote(unquote(user), safe="")
            masked = f"{url[:start]}{user}:***{url[end:]}"
    masked = _SECRET_QUERY.sub(r"\1***", masked)
    if not _parses(masked):
        scheme = _SCHEME.match(masked)
        masked = f"{scheme.group(0) if scheme else ''}//***"
    return masked


def scrub(text: str, url: str) -> str:
    """``text`` (e.g. an error message) with the URL's password replaced by ``***``.

    The password as :func:`safe_url` reads it (raw and unescaped), and as SQLAlchemy reads
    it where that is not part of the former.
    """
    text = text.replace(url, safe_url(url))
    secrets = set()
    where = _userinfo(url)
    if where is not None:
        raw = url[where[0] : where[1]].partition(":")[2]
        secrets |= {raw, unquote(raw)}
    try:
        import sqlalchemy

        theirs = str(sqlalchemy.engine.make_url(url).password or "")
    except Exception:
        theirs = ""
    if not any(theirs in s for s in secrets):
        secrets.add(theirs)
    for secret in sorted(secrets - {""}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def check_storage_url(url: str) -> Any:
    """Parse a storage URL; raise :class:`~actreg.ActregError` naming what is wrong."""
    import sqlalchemy

    if not isinstance(url, str) or not url.strip():
        raise ActregError("storage must be a SQLAlchemy URL, e.g. sqlite:///runs/search.db")
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:
        raise ActregError(
            f"malformed storage URL {safe_url(url)!r}; expected e.g. sqlite:///runs/search.db "
            "or postgresql://user:password@host:5432/database"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise ActregError(
            f"unsupported storage {backend!r} in {safe_url(url)!r}: the search stores its "
            "trials in sqlite (a file on this machine, e.g. sqlite:///runs/search.db) or "
            "postgresql (several machines, e.g. postgresql://user:password@host:5432/db); "
            "use one of those"
        )
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ActregError(
            "an in-memory SQLite storage cannot be shared or resumed; give a file, e.g. "
            "sqlite:///runs/search.db"
        )
    return parsed


class Store:
    """One worker's connection to the search database: the lock and the Optuna storage.

    Args:
        url: a SQLAlchemy URL (a SQLite file or PostgreSQL).
        heartbeat: seconds between heartbeats of a running trial.
        grace: seconds without a heartbeat after which a running trial is stale.
        patience: seconds a storage outage may last before a call gives up.
    """

    def __init__(self, url: str, heartbeat: int, grace: int, patience: float = 120.0) -> None:
        self.url = url
        self.masked = safe_url(url)
        self.parsed = check_storage_url(url)
        self.backend: str = self.parsed.get_backend_name()
        self.heartbeat = heartbeat
        self.grace = grace
        self.outage = Outage(self.masked, patience, lambda text: scrub(text, url))
        self._lock_file: Any = None
        self._lock_conn: Any = None
        self._depth = 0
        if self.backend == "sqlite":
            path = Path(self.parsed.database).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            self.lock_path = Path(f"{path}.lock")
        else:
            try:
                self._connect_lock()
            except ImportError as err:
                raise ActregError(
                    f"no database driver for {self.masked}: {err}; postgresql:// uses psycopg: "
                    "pip install 'actreg[search]'"
                ) from None
            except Exception as err:
                first = scrub(str(err), self.url).strip().splitlines()[0:2]
                raise ActregError(
                    f"cannot reach storage {self.masked}: {' '.join(first)}; check the host, "
                    "port, user and password, and that the server is running"
                ) from None
        self.storage = self.locked("opening the storage", self._make_storage)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, retried through storage outages (see :mod:`~actreg.lab.search._retry`)."""
        if self.backend == "sqlite":
            return fn()
        return self.outage.call(what, fn, reset=self._drop_lock)

    def locked(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` under the search-wide lock, the whole section retried through outages."""

        def section() -> T:
            with self.lock():
                return fn()

        return self.call(what, section)

    def _connect_lock(self) -> None:
        import sqlalchemy

        engine = sqlalchemy.create_engine(
            self.url, poolclass=sqlalchemy.pool.NullPool, connect_args=PG_CONNECT
        )
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(sqlalchemy.text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
        self._lock_conn = conn

    def _drop_lock(self) -> None:
        """Close the lock's connection after an error (the server then drops the lock)."""
        conn, self._lock_conn, self._depth = self._lock_conn, None, 0
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()
            with contextlib.suppress(Exception):
                conn.close()

    def _lock_key(self) -> int:
        digest = hashlib.sha1(b"actreg.lab.search").digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the search-wide lock (reentrant within one worker)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._acquire()
        self._depth = 1
        try:
            yield
        finally:
            self._depth = 0
            self._release()

    def _acquire(self) -> None:
        import sqlalchemy

        if self.backend == "sqlite":
            import fcntl

            self._lock_file = open(self.lock_path, "a+")  # held until _release
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            return
        if self._lock_conn is None:  # lost in an outage
            self._connect_lock()
        self._lock_conn.execute(
            sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._lock_key()}
        )

    def _release(self) -> None:
        import sqlalchemy

        if self.backend == "sqlite":
            import fcntl

            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None
            return
        try:
            self._lock_conn.execute(
                sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._lock_key()}
            )
        except Exception as err:
            # The section's work is done; a connection that died since has lost the lock.
            if not transient(err):
                raise
            self._drop_lock()

    def server_started_within(self, seconds: float) -> bool:
        """Whether the PostgreSQL server (re)started less than ``seconds`` ago."""
        import sqlalchemy

        if self.backend == "sqlite":
            return False
        query = "SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())"

        def uptime() -> float:
            with self.lock():
                return float(self._lock_conn.execute(sqlalchemy.text(query)).scalar_one())

        return self.call("reading the server's start time", uptime) < seconds

    def _make_storage(self) -> Any:
        import optuna

        kwargs: dict[str, Any] = {}
        if self.backend == "sqlite":
            # WAL: readers never block the writer. Persistent, so set once under the lock.
            with contextlib.closing(
                sqlite3.connect(self.parsed.database, timeout=SQLITE_TIMEOUT)
            ) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
            # BEGIN IMMEDIATE before every write: writers queue on the busy timeout
            # instead of failing when a read transaction would have to be upgraded.
            kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT, "isolation_level": "IMMEDIATE"}
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["connect_args"] = PG_CONNECT
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return optuna.storages.RDBStorage(
                    self.url,
                    engine_kwargs=kwargs,
                    heartbeat_interval=self.heartbeat,
                    grace_period=self.grace,
                )
            except Exception as err:
                if transient(err):
                    raise
                raise ActregError(
                    f"cannot open storage {self.masked}: {scrub(str(err), self.url)}"
                ) from None

    def close(self) -> None:
        """Close the connections (the lock connection and the storage's pool)."""
        self._drop_lock()
        storage = getattr(self, "storage", None)
        if storage is not None:
            storage.engine.dispose()

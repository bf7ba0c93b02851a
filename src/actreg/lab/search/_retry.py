"""Riding out storage outages: retries with capped exponential backoff within a deadline.

A worker's storage calls (the search-wide lock, heartbeats, claiming a trial, storing a
result) go through :meth:`Outage.call`: an error that means "the server cannot be reached
right now" (:func:`transient`) is retried after 0.5, 1, 2, 4, 8, 8, ... seconds until the
call succeeds or the outage has lasted ``patience`` seconds, when it becomes one
:class:`~actreg.ActregError` that names the storage (password masked) and says that the
same command, run again, resumes. Every other error is raised at once.

One :class:`Outage` per worker is shared by its threads (the trial's heartbeat and the
main loop), so an outage is logged once when it starts and once when it ends, however many
calls meet it, and the deadline counts from the first failure any of them saw.

Design: the retry wraps whole units of work (a locked section such as "claim a trial", or
"store trial 3's result") rather than single SQL statements. A connection lost inside a
locked section also loses the lock (the server drops a dead session's advisory locks), so
the section is run again from the start under a new lock; each section is written to be
safe to run twice (a result already stored is recognized, not stored again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from actreg._errors import ActregError

__all__ = ["Outage", "reason", "transient"]

log = logging.getLogger("actreg.lab.search")

T = TypeVar("T")

FIRST_DELAY = 0.5  # seconds before the first retry; doubled after each failure ...
MAX_DELAY = 8.0  # ... up to this


def transient(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) means the server is unreachable now:
    SQLAlchemy's ``OperationalError``, ``InterfaceError``, a lost connection. Optuna wraps
    them in ``StorageInternalError``, hence the walk along ``__cause__``/``__context__``."""
    import sqlalchemy.exc as sa

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError)):
            return True
        if isinstance(current, sa.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa.PendingRollbackError):
            return True
        current = current.__cause__ or current.__context__
    return False


def reason(err: BaseException) -> str:
    """The first line of the driver's error that ``err`` was raised from ("connection
    refused"), not a wrapper's (Optuna's says "invalid data in the commit")."""
    seen: set[int] = set()
    current: BaseException | None = err
    found: BaseException = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        orig = getattr(current, "orig", None)  # SQLAlchemy's DBAPIError: the driver's error
        if isinstance(orig, BaseException) and str(orig).strip():
            found = orig
            break
        current = current.__cause__ or current.__context__
    lines = str(found).strip().splitlines()
    return lines[0] if lines else type(found).__name__


class Outage:
    """The state of one worker's connection to the storage: up, or down since when.

    Args:
        masked: the storage URL with its password masked (for messages).
        patience: seconds an outage may last before a call gives up.
        scrub: makes an error message safe to log (hides the password).

    Example:
        >>> outage = Outage("postgresql://u:***@db/runs", patience=60.0, scrub=str)
        >>> outage.call("a query", lambda: 42, reset=lambda: None)
        42
    """

    def __init__(self, masked: str, patience: float, scrub: Callable[[str], str]) -> None:
        self.masked = masked
        self.patience = patience
        self.scrub = scrub
        self.since: float | None = None  # time.monotonic() of the first failure
        self.back_at = -float("inf")  # time.monotonic() when the last outage ended
        self.outages = 0
        self._lock = threading.Lock()

    def failed(self, what: str, err: BaseException) -> float:
        """Note a failed call; returns how long the outage has lasted (seconds)."""
        with self._lock:
            now = time.monotonic()
            if self.since is None:
                self.since = now
                self.outages += 1
                log.warning(
                    "storage %s unreachable (%s: %s); retrying for up to %g s",
                    self.masked,
                    what,
                    self.scrub(reason(err)),
                    self.patience,
                )
            return now - self.since

    def ok(self) -> None:
        """Note a call that went through (ends an outage, logged once)."""
        if self.since is None:
            return
        with self._lock:
            if self.since is not None:
                now = time.monotonic()
                log.warning("storage %s is back after %.0f s", self.masked, now - self.since)
                self.since, self.back_at = None, now

    def recently_back(self, window: float) -> bool:
        """Whether the storage is down, or came back less than ``window`` seconds ago."""
        return self.since is not None or time.monotonic() - self.back_at < window

    def call(self, what: str, fn: Callable[[], T], reset: Callable[[], None]) -> T:
        """``fn()``, retried while the storage is unreachable (``reset()`` before each retry).

        Raises:
            ActregError: when the outage lasts longer than ``patience`` seconds.
        """
        delay = FIRST_DELAY
        while True:
            try:
                result = fn()
            except Exception as err:
                if not transient(err):
                    raise
                reset()
                down = self.failed(what, err)
                left = self.patience - down
                if left <= 0:
                    raise ActregError(
                        f"storage {self.masked} unreachable for {down:.0f} s (while {what}: "
                        f"{self.scrub(reason(err))}); "
                        "when the server is back, run the same command again: it resumes "
                        "(finished trials are kept)"
                    ) from None
                time.sleep(min(delay, left))
                delay = min(2 * delay, MAX_DELAY)
                continue
            self.ok()
            return result

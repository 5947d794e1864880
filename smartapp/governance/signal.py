"""The cross-process signal that governance changed: a Redis counter, or the store's own.

Every process caches governance's state (`smartapp.governance.state.PolicyCache`). The
store's `governance_version` row is always bumped with a change, in its transaction, and
without Redis a process reads that row per request to learn whether its copy is stale.
With SMARTAPP_REDIS_URL, a committed change also increments one Redis key
(`smartapp:governance:changes`), and a process reads that key instead: no store statement
per request while nothing changed, and every process drops its copy on its next request
after the change. Redis is only a hint: a process still reads the row every
`RECHECK_SECONDS` whatever the key says (an increment lost while Redis was away delays a
change by that much at most), and reads it on every request while Redis cannot be
reached. Redis INCR/GET: https://redis.io/docs/latest/commands/incr/
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from smartapp.db import Database

log = logging.getLogger(__name__)

#: The Redis key every process increments on a governance change and reads per request.
REDIS_KEY = "smartapp:governance:changes"
#: The longest a process trusts the Redis key alone before reading the store's row again.
RECHECK_SECONDS = 30.0
#: Redis must answer within this (seconds), or the request reads the store's row instead.
REDIS_TIMEOUT = 0.5

#: `Session.info` keys: the store's signal (from `Database.info`), and a change to announce.
SIGNAL_INFO = "smartapp.governance.signal"
CHANGED_INFO = "smartapp.governance.changed"


class ChangeSignal(Protocol):
    """How processes tell one another that governance changed."""

    def stamp(self) -> str | None:
        """What the signal says now (equal stamps: no change between them); None when it
        cannot say, and the store's counter must be read."""

    def announce(self) -> None:
        """Tell every process that governance changed (after the change is committed)."""


class RedisSignal:
    """The counter at REDIS_KEY in the Redis at `url` (the rate limits' SMARTAPP_REDIS_URL)."""

    def __init__(self, url: str, *, client: Any = None) -> None:
        import redis

        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._redis = client or redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        self._lock = threading.Lock()
        self._failing = False

    def __repr__(self) -> str:  # the URL may carry a password
        return "RedisSignal()"

    def stamp(self) -> str | None:
        try:
            value = self._redis.get(REDIS_KEY)
        except self._errors as exc:
            self._failed("read", exc)
            return None
        self._recovered()
        if value is None:
            return "0"
        return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)

    def announce(self) -> None:
        try:
            self._redis.incr(REDIS_KEY)
        except self._errors as exc:
            # The change is committed and the row bumped: the others see it by the recheck.
            self._failed("increment", exc)
            return
        self._recovered()

    def _failed(self, what: str, exc: BaseException) -> None:
        with self._lock:
            first, self._failing = not self._failing, True
        if first:  # once per outage, not once per request
            log.warning(
                "Redis unavailable for the governance signal (%s: %s); reading the store's "
                "counter until it answers",
                what,
                type(exc).__name__,
            )

    def _recovered(self) -> None:
        if self._failing:
            with self._lock:
                self._failing = False
            log.info("Redis answers the governance signal again")


def attach(database: Database, signal: ChangeSignal | None) -> None:
    """Have every committed governance change in `database` announced on `signal`."""
    if signal is None:
        database.info.pop(SIGNAL_INFO, None)
    else:
        database.info[SIGNAL_INFO] = signal


def mark_changed(session: Session) -> None:
    """Called where the counter is bumped (`governance.models`): announce after commit."""
    if SIGNAL_INFO in session.info:
        session.info[CHANGED_INFO] = True


@event.listens_for(Session, "after_commit")
def _announce(session: Session) -> None:
    if session.info.pop(CHANGED_INFO, False):
        signal: ChangeSignal | None = session.info.get(SIGNAL_INFO)
        if signal is not None:
            signal.announce()


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    # A change rolled back is no change: nothing to announce.
    session.info.pop(CHANGED_INFO, None)

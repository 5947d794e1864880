"""Governance state as one cached snapshot per process, invalidated by a version counter.

Rollout rules, kill switches and active engine versions change rarely and are read on
every sidebar request. Every write to those tables (any ORM flush that touches them)
also bumps the single row of `governance_version` in the same transaction (see
`governance.models`); a process reads that one row per request (1 statement) and reloads
the whole state (3 statements) only when the number moved. So a change made by any
process takes effect on the next request everywhere, as before, at the cost of one
indexed read instead of ~42. With a `ChangeSignal` (Redis, `governance.signal`) the
process asks Redis instead while its key stays put, and reads the row only when the key
moved, when Redis cannot answer, or every `RECHECK_SECONDS`: no statement at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from smartapp.db import Database
from smartapp.governance.models import EngineVersion, GovernanceVersion, RolloutRule
from smartapp.governance.registry import active_versions, engaged_switches
from smartapp.governance.rollout import rules_in_force
from smartapp.governance.signal import RECHECK_SECONDS, ChangeSignal


def read_version(session: Session) -> int | None:
    """The counter, or None when the row is missing (then nothing may be cached)."""
    return session.scalar(select(GovernanceVersion.version).where(GovernanceVersion.id == 1))


@dataclass(frozen=True, kw_only=True)
class GovernanceState:
    """What governance decided, as read at `version` (detached rows: read them, never write)."""

    version: int | None
    rules: tuple[RolloutRule, ...]
    engines: tuple[EngineVersion, ...]
    #: (scope, target) pairs whose kill switch is engaged.
    killed: frozenset[tuple[str, str]]

    def is_killed(self, *, kind: str, engine: str) -> bool:
        return ("kind", kind) in self.killed or ("engine", engine) in self.killed


def load_state(session: Session, version: int | None) -> GovernanceState:
    return GovernanceState(
        version=version,
        rules=tuple(rules_in_force(session)),
        engines=tuple(active_versions(session)),
        killed=engaged_switches(session),
    )


class PolicyCache:
    """The governance state for this process; `current()` costs one statement when warm
    (none with a `signal` whose stamp has not moved within `recheck_seconds`)."""

    def __init__(
        self,
        database: Database,
        *,
        on_reload: Callable[[], None] | None = None,
        signal: ChangeSignal | None = None,
        recheck_seconds: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = database
        self._lock = threading.Lock()
        self._state: GovernanceState | None = None
        self._on_reload = on_reload
        self._signal = signal
        self._recheck = recheck_seconds
        self._clock = clock
        #: The signal's stamp when the state was last confirmed, and when that was.
        self._stamp: str | None = None
        self._confirmed = 0.0

    def current(self) -> GovernanceState:
        # The signal first, then the row, then the state: each read after is at least as new.
        stamp = self._signal.stamp() if self._signal is not None else None
        now = self._clock()
        state = self._state
        if (
            state is not None
            and stamp is not None
            and stamp == self._stamp
            and now - self._confirmed < self._recheck
        ):
            return state
        with self._db.session() as session:
            version = read_version(session)
            if state is not None and version is not None and state.version == version:
                self._confirm(stamp, now)
                return state
            state = load_state(session, version)
        with self._lock:
            self._state = state
        self._confirm(stamp, now)
        if self._on_reload is not None:
            self._on_reload()
        return state

    def _confirm(self, stamp: str | None, now: float) -> None:
        with self._lock:
            self._stamp, self._confirmed = stamp, now

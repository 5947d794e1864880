"""Governance state as one cached snapshot per process, invalidated by a version counter.

Rollout rules, kill switches and active engine versions change rarely and are read on
every sidebar request. Every write to those tables (any ORM flush that touches them)
also bumps the single row of `governance_version` in the same transaction (see
`admin.models`); a process reads that one row per request (1 statement) and reloads
the whole state (3 statements) only when the number moved. So a change made by any
process takes effect on the next request everywhere, as before, at the cost of one
indexed read instead of ~42.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from smartapp.db import Database
from smartapp.governance.models import EngineVersion, GovernanceVersion, RolloutRule
from smartapp.governance.registry import active_versions, engaged_switches
from smartapp.governance.rollout import rules_in_force


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
    """The governance state for this process; `current()` costs one statement when warm."""

    def __init__(self, database: Database, *, on_reload: Callable[[], None] | None = None) -> None:
        self._db = database
        self._lock = threading.Lock()
        self._state: GovernanceState | None = None
        self._on_reload = on_reload

    def current(self) -> GovernanceState:
        with self._db.session() as session:
            # The version first: state read after it is at least that new.
            version = read_version(session)
            state = self._state
            if state is not None and version is not None and state.version == version:
                return state
            state = load_state(session, version)
        with self._lock:
            self._state = state
        if self._on_reload is not None:
            self._on_reload()
        return state

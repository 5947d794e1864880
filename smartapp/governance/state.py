"""Governance state as one cached snapshot per process, invalidated by a version counter.

Rollout rules, kill switches and active engine versions change rarely and are read on
every sidebar request. Every write to those tables (any ORM flush that touches them)
also bumps the single row of `governance_version` in the same transaction (see
`governance.models`); a process reads that one row per request (1 statement) and reloads
the whole state only when the number moved, in 2 more: the version again with the rules
in force and the kill switches engaged, then the active versions (`load_state`; the
policy snapshot's reload is 3 statements in all). So a change made by any
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
from typing import Any

from sqlalchemy import func, select, true
from sqlalchemy.orm import Session

from smartapp.db import Database
from smartapp.governance.models import (
    EngineVersion,
    GovernanceVersion,
    KillSwitchEvent,
    RolloutRule,
)
from smartapp.governance.registry import active_versions, engaged_switches
from smartapp.governance.rollout import rules_in_force
from smartapp.governance.signal import RECHECK_SECONDS, ChangeSignal


def read_version(session: Session) -> int | None:
    """The counter, or None when the row is missing (then nothing may be cached)."""
    return session.scalar(select(GovernanceVersion.version).where(GovernanceVersion.id == 1))


def version_column() -> Any:
    """The counter as a scalar subquery: read beside another statement of a request (the
    sidebar's drafted kinds), and handed to `PolicyCache.current(version=...)`."""
    return (
        select(GovernanceVersion.version)
        .where(GovernanceVersion.id == 1)
        .scalar_subquery()
        .label("governance_version")
    )


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


#: Between a switch's scope and target, and between switches, in the one string the
#: switches engaged are read as (characters no kind or engine name holds).
_PAIR, _SWITCH = "\x1f", "\x1e"


def _engaged_switches_column() -> Any:
    """The switches engaged as one string (the latest event per scope and target is in
    force, as in `registry.kill_switches`): a scalar beside every row of the rules."""
    ranked = select(
        KillSwitchEvent.scope,
        KillSwitchEvent.target,
        KillSwitchEvent.engaged,
        func.row_number()
        .over(
            partition_by=(KillSwitchEvent.scope, KillSwitchEvent.target),
            order_by=(KillSwitchEvent.seq.desc(), KillSwitchEvent.at.desc()),
        )
        .label("rank"),
    ).subquery()
    return (
        select(func.aggregate_strings(ranked.c.scope + _PAIR + ranked.c.target, _SWITCH))
        .where(ranked.c.rank == 1, ranked.c.engaged.is_(true()))
        .scalar_subquery()
    )


def load_state(session: Session) -> GovernanceState:
    """Governance as of now, in 2 statements: the version, the rules in force and the
    switches engaged in one (so all three are of one moment), then the active versions."""
    rows = session.execute(
        select(GovernanceVersion.version, _engaged_switches_column(), RolloutRule)
        .select_from(GovernanceVersion)
        # Every rule not retired (as `rollout.rules_in_force`); one row with none.
        .outerjoin(RolloutRule, RolloutRule.retired_at.is_(None))
        .where(GovernanceVersion.id == 1)
    ).all()
    if not rows:
        # No version row (nothing may be cached): read the parts one by one.
        return GovernanceState(
            version=None,
            rules=tuple(rules_in_force(session)),
            engines=tuple(active_versions(session)),
            killed=engaged_switches(session),
        )
    version, switches, _ = rows[0]
    killed = frozenset(
        (scope, target)
        for scope, _, target in (p.partition(_PAIR) for p in (switches or "").split(_SWITCH))
        if target
    )
    return GovernanceState(
        version=version,
        rules=tuple(rule for _, _, rule in rows if rule is not None),
        engines=tuple(active_versions(session)),
        killed=killed,
    )


class PolicyCache:
    """The governance state for this process; `current()` costs one statement when warm
    (none with a `signal` whose stamp has not moved within `recheck_seconds`), three when
    the state changed."""

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

    def current(self, *, version: int | None = None) -> GovernanceState:
        """The state; `version`: the counter as this request already read it (then it is
        not read again), or None. Ignored with a signal, whose stamp must be read first."""
        if version is not None and self._signal is None:
            state = self._state
            if state is not None and state.version == version:
                return state
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
            state = load_state(session)
        with self._lock:
            self._state = state
        self._confirm(stamp, now)
        if self._on_reload is not None:
            self._on_reload()
        return state

    def _confirm(self, stamp: str | None, now: float) -> None:
        with self._lock:
            self._stamp, self._confirmed = stamp, now

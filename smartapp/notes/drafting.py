"""What a clinician is shown, as governance allows it: rollout, kill switches, approved engines.

On every request the plan is worked out from the policy snapshot (`smartapp.policy`: the
site file and governance's state as this process caches it, one statement to learn that
nothing changed, so a kill switch or a rollback still takes effect on the next request in
every process), then the engines draft only what the plan allows, with the engine version
governance made active. A plan is a pure function of that snapshot, the clinician and the
day, so it is kept per state version and computed once per clinician.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from smartapp.db import Database, utcnow
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.governance.signal import ChangeSignal
from smartapp.governance.state import GovernanceState
from smartapp.policy import SWITCHED_OFF, DraftPlan, NotEnabled, Policy, PolicySource
from smartapp.suggestions.interfaces import Suggestion
from smartapp.suggestions.registry import KindRun, SuggestionService

__all__ = ["SWITCHED_OFF", "DraftPlan", "Drafts", "GovernedDrafter", "NotEnabled", "plan_for"]

#: Seconds past an LLM deadline for its draft to be verified and stored, before the kind is
#: no longer reported as on its way (its process may have died meanwhile).
GRACE = 5.0


@dataclass(frozen=True, kw_only=True)
class Drafts:
    """What the engines drafted now, and the LLM's kinds still on their way.

    `suggestions` holds every kind (the rules standing in for the pending ones); each
    pending future gives that kind's own suggestions, by `pending_until` at the latest.
    """

    suggestions: list[Suggestion]
    pending: Mapping[str, Future[list[Suggestion]]] = field(default_factory=dict)
    pending_until: datetime | None = None


class GovernedDrafter:
    #: Plans kept per clinician and day for the current governance state (then dropped).
    MAX_PLANS = 4096

    def __init__(
        self,
        *,
        engines: SuggestionService,
        database: Database,
        clock: Callable[[], datetime] = utcnow,
        signal: ChangeSignal | None = None,
    ) -> None:
        self._engines = engines
        self._clock = clock
        self._plans: dict[tuple[int, str, str | None, date], DraftPlan] = {}
        self._plans_lock = threading.Lock()
        self.policy = PolicySource(
            site_config=lambda: engines.config,
            database=database,
            on_reload=self._forget_plans,
            signal=signal,
        )

    def _forget_plans(self) -> None:
        with self._plans_lock:
            self._plans.clear()

    def plan(
        self, *, iss: str, fhir_user: str | None, governance_version: int | None = None
    ) -> DraftPlan:
        """The clinician's plan under governance now (`governance_version`: the counter as
        the request read it already, or None)."""
        now = self._clock()
        policy = self.policy.current(governance_version=governance_version)
        state = policy.governance
        # Rollout rules have start and end instants: only a state without any is day-stable.
        keep = state.version is not None and not any(
            r.effective_from or r.effective_to for r in state.rules
        )
        key = (state.version or 0, iss, fhir_user, now.date())
        cached = self._plans.get(key) if keep else None
        if cached is not None:
            return cached
        plan = policy.plan(iss=iss, fhir_user=fhir_user, now=now)
        if keep:
            with self._plans_lock:
                if len(self._plans) >= self.MAX_PLANS:
                    self._plans.clear()
                self._plans[key] = plan
        return plan

    def draft(self, snapshot: ChartSnapshot, *, iss: str, plan: DraftPlan) -> Drafts:
        if not plan.kinds:
            return Drafts(suggestions=[])
        started = self._engines.start(
            snapshot, iss=iss, kinds=plan.kinds, choices=plan.choices, enabled=plan.enabled
        )
        # The deadline is a monotonic instant; the store keeps wall-clock time.
        until = self._clock() + timedelta(seconds=started.deadline - time.monotonic() + GRACE)
        return Drafts(
            suggestions=started.run.suggestions,
            pending={kind: _suggestions_of(future) for kind, future in started.pending.items()},
            pending_until=until if started.pending else None,
        )


def _suggestions_of(future: Future[KindRun]) -> Future[list[Suggestion]]:
    """The shown suggestions of a kind's run, when it arrives."""
    out: Future[list[Suggestion]] = Future()

    def done(run: Future[KindRun]) -> None:
        if run.cancelled():
            out.cancel()
            out.set_running_or_notify_cancel()
        elif (error := run.exception()) is not None:
            out.set_exception(error)
        else:
            out.set_result(list(run.result().suggestions))

    future.add_done_callback(done)
    return out


def plan_for(
    engines: SuggestionService,
    state: GovernanceState,
    *,
    iss: str,
    fhir_user: str | None,
    now: datetime,
) -> DraftPlan:
    """What this clinician gets at `iss` now, from governance's state (pure: no store)."""
    policy = Policy(site_config=engines.config, governance=state)
    return policy.plan(iss=iss, fhir_user=fhir_user, now=now)

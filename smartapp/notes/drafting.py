"""What a clinician is shown, as governance allows it: rollout, kill switches, approved engines.

On every request the plan is worked out from governance's state as this process caches
it (`admin.policy`: one statement to learn that nothing changed, so a kill switch or a
rollback still takes effect on the next request in every process), then the engines
draft only what the plan allows, with the engine version governance made active. A plan
is a pure function of that state, the site configuration, the clinician and the day, so
it is kept per state version and computed once per clinician.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from smartapp.admin.identity import normalize_fhir_user
from smartapp.admin.policy import GovernanceState, PolicyCache
from smartapp.admin.registry import pick_active
from smartapp.admin.rollout import NOT_YET_FOR_YOU, choose_rule, decide
from smartapp.config import normalize_issuer
from smartapp.db import Database, utcnow
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.placement import BUCKETS, INSIDE, OUTSIDE
from smartapp.suggestions.interfaces import Suggestion
from smartapp.suggestions.kinds import ENGINE_NAMES, KIND_LABELS
from smartapp.suggestions.registry import EngineChoice, KindRun, SuggestionService

if TYPE_CHECKING:
    from smartapp.siteconfig import RolloutRule as SiteRolloutRule

SWITCHED_OFF = "switched off by the governance team"


@dataclass(frozen=True, kw_only=True)
class NotEnabled:
    kind: str
    title: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "title": self.title, "reason": self.reason}


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


@dataclass(frozen=True, kw_only=True)
class DraftPlan:
    kinds: tuple[str, ...]
    choices: dict[str, EngineChoice] = field(default_factory=dict)
    not_enabled: tuple[NotEnabled, ...] = ()
    #: kind -> INSIDE or OUTSIDE, for each kind whose rollout in force here is partial
    #: (a share strictly between 0 and 100 %, placed by the hash): recorded with the note.
    #: The assignment, not what was shown: a kill switch does not move a clinician's arm.
    arms: Mapping[str, str] = field(default_factory=dict)

    def token(self, kind: str) -> str:
        """What governance chose for `kind`, as stored with its drafts ("" = as configured).

        A draft made under another choice (the kill switch thrown, a version rolled
        back) is not shown under this one: that kind is drafted again.
        """
        choice = self.choices.get(kind)
        if choice is None:
            return ""
        return "|".join(
            (choice.engine, choice.model or "", choice.version or "", choice.reason or "")
        )[:160]

    def only(self, kinds: tuple[str, ...]) -> DraftPlan:
        return DraftPlan(
            kinds=kinds,
            choices={k: c for k, c in self.choices.items() if k in kinds},
            not_enabled=self.not_enabled,
            arms=self.arms,
        )


class GovernedDrafter:
    #: Plans kept per clinician and day for the current governance state (then dropped).
    MAX_PLANS = 4096

    def __init__(
        self,
        *,
        engines: SuggestionService,
        database: Database,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engines = engines
        self._clock = clock
        self._plans: dict[tuple[int, str, str | None, date], DraftPlan] = {}
        self._plans_lock = threading.Lock()
        self.policy = PolicyCache(database, on_reload=self._forget_plans)

    def _forget_plans(self) -> None:
        with self._plans_lock:
            self._plans.clear()

    def plan(self, *, iss: str, fhir_user: str | None) -> DraftPlan:
        now = self._clock()
        state = self.policy.current()
        # Rollout rules have start and end instants: only a state without any is day-stable.
        keep = state.version is not None and not any(
            r.effective_from or r.effective_to for r in state.rules
        )
        key = (state.version or 0, iss, fhir_user, now.date())
        cached = self._plans.get(key) if keep else None
        if cached is not None:
            return cached
        plan = plan_for(self._engines, state, iss=iss, fhir_user=fhir_user, now=now)
        if keep:
            with self._plans_lock:
                if len(self._plans) >= self.MAX_PLANS:
                    self._plans.clear()
                self._plans[key] = plan
        return plan

    def draft(self, snapshot: ChartSnapshot, *, iss: str, plan: DraftPlan) -> Drafts:
        if not plan.kinds:
            return Drafts(suggestions=[])
        started = self._engines.start(snapshot, iss=iss, kinds=plan.kinds, choices=plan.choices)
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
    effective = engines.config.for_issuer(iss)
    kinds: list[str] = []
    choices: dict[str, EngineChoice] = {}
    refused: list[NotEnabled] = []
    arms: dict[str, str] = {}
    # Without a fhirUser a clinician is never placed (left out of every partial rollout):
    # that is not the hash's random assignment, so such a note is in no arm.
    placed = normalize_fhir_user(fhir_user) is not None

    def refuse(kind: str, reason: str) -> None:
        refused.append(NotEnabled(kind=kind, title=KIND_LABELS.get(kind, kind), reason=reason))

    for kind in effective.kind_ids:
        # One rollout rule decides, placed by the one hash: the dashboard's rule in
        # force for this site and kind, else the site file's. They never stack.
        rule = choose_rule(state.rules, site=iss, kind=kind, now=now)
        if rule is not None:
            rollout = decide(rule, site=iss, kind=kind, fhir_user=fhir_user)
            if placed and rule.enabled and 0 < rule.percentage_bp < BUCKETS:
                arms[kind] = INSIDE if rollout.enabled else OUTSIDE
            if not rollout.enabled:
                refuse(kind, rollout.reason)
                continue
        else:
            site_rule = effective.rollout_for(kind)
            included = site_rule.includes(
                normalize_fhir_user(fhir_user),
                site=normalize_issuer(iss),
                kind=kind,
                today=now.date(),
            )
            if placed and _partial(site_rule, now.date()):
                arms[kind] = INSIDE if included else OUTSIDE
            if not included:
                refuse(kind, NOT_YET_FOR_YOU)
                continue
        configured = effective.kind(kind)
        engine = configured.engine if configured is not None else "builtin"
        active = pick_active(state.engines, kind=kind, site=iss)
        model = version = None
        if active is not None:
            engine = "llm" if active.name == "llm" else "builtin"
            model, version = active.model, active.version
        if any(state.is_killed(kind=kind, engine=n) for n in ENGINE_NAMES[engine]):
            rules_allowed = engine == "llm" and not any(
                state.is_killed(kind=kind, engine=n) for n in ENGINE_NAMES["builtin"]
            )
            if not rules_allowed:
                refuse(kind, f"This suggestion type is {SWITCHED_OFF}.")
                continue
            choices[kind] = EngineChoice(
                engine="builtin",
                reason=f"The AI engine is {SWITCHED_OFF}; showing rule-based suggestions",
            )
        elif active is not None:
            choices[kind] = EngineChoice(engine=engine, model=model, version=version)
        kinds.append(kind)
    return DraftPlan(kinds=tuple(kinds), choices=choices, not_enabled=tuple(refused), arms=arms)


def _partial(rule: SiteRolloutRule, today: date) -> bool:
    """Whether the site file's rollout places clinicians by the hash today (0 < share < 100)."""
    return (
        rule.enabled
        and 0 < rule.percent < 100
        and (rule.start is None or rule.start <= today)
        and (rule.end is None or today <= rule.end)
    )

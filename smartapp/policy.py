"""One policy: the environment's settings, the site file and governance's state, with sources.

What a clinician gets (which kinds, which engine, rolled out to whom) is a pure function
of a `Policy` snapshot, the clinician and the instant (`Policy.plan`). The snapshot joins
`Settings` (source "env"; each setting also knows its own, `Settings.source_of`: the
environment, the `.env` file, the instance folder or a default, listed by
`Policy.settings_values`), the site file (`SiteConfig`, source "file") and governance's
state as this process caches it (`admin.policy.PolicyCache`: one statement when nothing
changed; source "dashboard"). Rollout rules may come from the file or the dashboard; the
dashboard's rule in force for a site and kind takes the place of the file's (they never
stack), and `Policy.rollout` lists both with their source, as the admin's rollout page
shows them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Literal

from smartapp.config import normalize_issuer
from smartapp.governance.registry import pick_active
from smartapp.governance.rollout import NOT_YET_FOR_YOU, choose_rule, decide
from smartapp.governance.state import GovernanceState, PolicyCache
from smartapp.identity import normalize_fhir_user
from smartapp.kinds import ENGINE_NAMES, KIND_LABELS
from smartapp.placement import BUCKETS, INSIDE, OUTSIDE
from smartapp.siteconfig import RolloutRule as FileRule
from smartapp.siteconfig import SiteConfig
from smartapp.suggestions.registry import EngineChoice

if TYPE_CHECKING:
    from smartapp.config import Settings, SettingValue
    from smartapp.db import Database
    from smartapp.governance.signal import ChangeSignal

#: Where a value came from: the environment, the site file, the admin dashboard (the
#: governance store), or the app's default.
Source = Literal["env", "file", "dashboard", "default"]

SWITCHED_OFF = "switched off by the governance team"
#: The site file's wildcard kind, and the dashboard's.
FILE_ANY_KIND, ANY = "all", "*"


@dataclass(frozen=True, kw_only=True)
class NotEnabled:
    kind: str
    title: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "title": self.title, "reason": self.reason}


@dataclass(frozen=True, kw_only=True)
class DraftPlan:
    kinds: tuple[str, ...]
    choices: dict[str, EngineChoice] = field(default_factory=dict)
    not_enabled: tuple[NotEnabled, ...] = ()
    #: kind -> INSIDE or OUTSIDE, for each kind whose rollout in force here is partial
    #: (a share strictly between 0 and 100 %, placed by the hash): recorded with the note.
    #: The assignment, not what was shown: a kill switch does not move a clinician's arm.
    arms: dict[str, str] = field(default_factory=dict)
    #: Every kind shown to this clinician, when `kinds` is only those drafted now
    #: (`only`): a draft carries no content of a kind outside it.
    shown: tuple[str, ...] | None = None

    @property
    def enabled(self) -> tuple[str, ...]:
        """The kinds this clinician is shown (rolled out, not switched off, in the file)."""
        return self.kinds if self.shown is None else self.shown

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
            shown=self.enabled,
        )

    def decision(self, kind: str) -> tuple[bool, str]:
        """Whether `kind` is shown under this plan, and why (words for the admin)."""
        if kind in self.kinds:
            choice = self.choices.get(kind)
            return True, (choice.reason if choice and choice.reason else "Enabled.")
        for item in self.not_enabled:
            if item.kind == kind:
                return False, item.reason
        return False, "Not among this site's kinds in the site file ([suggestions] kinds)."


@dataclass(frozen=True, kw_only=True)
class RolloutEntry:
    """One rollout rule as the admin sees it, whichever source it came from."""

    source: Literal["file", "dashboard"]
    site: str  # an issuer, or "*"
    kind: str  # a kind, or "*"
    enabled: bool
    percentage: float
    starts: date | datetime | None = None
    ends: date | datetime | None = None
    rule_id: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "site": self.site,
            "kind": self.kind,
            "enabled": self.enabled,
            "percentage": self.percentage,
            "starts": self.starts.isoformat() if self.starts else None,
            "ends": self.ends.isoformat() if self.ends else None,
            "id": self.rule_id,
            "reason": self.reason,
        }


@dataclass(frozen=True, kw_only=True)
class RolloutOutcome:
    enabled: bool
    #: Words the sidebar and the admin can show as they are (no PHI, no internal ids).
    reason: str
    #: Which rule decided: the dashboard's, the site file's, or none ("default": on).
    source: Source
    rule_id: str | None = None
    #: The rule places clinicians by the hash (0 < share < 100 %, in force): notes record
    #: the arm.
    partial: bool = False


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Settings, site file and governance state, read together (one snapshot)."""

    site_config: SiteConfig
    governance: GovernanceState
    #: The environment's settings (None in tests of the pure parts).
    settings: Settings | None = None

    @property
    def version(self) -> int | None:
        return self.governance.version

    def settings_values(self) -> tuple[SettingValue, ...]:
        """Every SMARTAPP_* setting with its value (never a secret's) and where it came
        from, beside the site file's and the dashboard's values (`rollout`)."""
        return self.settings.described() if self.settings is not None else ()

    def rollout(self) -> tuple[RolloutEntry, ...]:
        """Every rollout rule in force or to come: the site file's, then the dashboard's."""
        entries: list[RolloutEntry] = []
        for effective in self.site_config.all_effective():
            site = effective.issuer or ANY
            for kind, rule in effective.rollout.items():
                entries.append(_file_entry(site, kind, rule))
        for row in sorted(self.governance.rules, key=lambda r: (r.site, r.kind, r.created_at)):
            entries.append(
                RolloutEntry(
                    source="dashboard",
                    site=row.site,
                    kind=row.kind,
                    enabled=row.enabled,
                    percentage=row.percentage_bp / 100,
                    starts=row.effective_from,
                    ends=row.effective_to,
                    rule_id=row.id,
                    reason=row.reason,
                )
            )
        return tuple(entries)

    def engine_source(self, kind: str, *, iss: str | None) -> Source:
        """Where the engine of `kind` at `iss` is chosen: an active version on the dashboard,
        else the site file (when one is loaded), else the default."""
        if iss and pick_active(self.governance.engines, kind=kind, site=iss) is not None:
            return "dashboard"
        return "file" if self.site_config.source is not None else "default"

    def rollout_decision(
        self, *, kind: str, iss: str, fhir_user: str | None, now: datetime
    ) -> RolloutOutcome:
        """Whether this clinician is in the rollout of `kind` at `iss` now, and by which rule.

        One rule decides, placed by the one hash: the dashboard's rule in force for this
        site and kind, else the site file's. They never stack.
        """
        rule = choose_rule(self.governance.rules, site=iss, kind=kind, now=now)
        if rule is not None:
            decided = decide(rule, site=iss, kind=kind, fhir_user=fhir_user)
            return RolloutOutcome(
                enabled=decided.enabled,
                reason=decided.reason,
                source="dashboard",
                rule_id=rule.id,
                partial=rule.enabled and 0 < rule.percentage_bp < BUCKETS,
            )
        effective = self.site_config.for_issuer(iss)
        site_rule = effective.rollout_for(kind)
        included = site_rule.includes(
            normalize_fhir_user(fhir_user), site=normalize_issuer(iss), kind=kind, today=now.date()
        )
        given = kind in effective.rollout or FILE_ANY_KIND in effective.rollout
        if not included:
            reason = NOT_YET_FOR_YOU if site_rule.enabled else "Not enabled at this site."
        elif not given:
            reason = "Enabled (no rollout rule applies)."
        elif site_rule.percent >= 100:
            reason = "Enabled at this site."
        else:
            reason = "Enabled for you (phased rollout)."
        return RolloutOutcome(
            enabled=included,
            reason=reason,
            source="file" if given else "default",
            partial=_partial(site_rule, now.date()),
        )

    def plan(self, *, iss: str, fhir_user: str | None, now: datetime) -> DraftPlan:
        """What this clinician gets at `iss` now (pure: no store, no clock)."""
        state = self.governance
        effective = self.site_config.for_issuer(iss)
        kinds: list[str] = []
        choices: dict[str, EngineChoice] = {}
        refused: list[NotEnabled] = []
        arms: dict[str, str] = {}
        # Without a fhirUser a clinician is never placed (left out of every partial
        # rollout): that is not the hash's random assignment, so such a note is in no arm.
        placed = normalize_fhir_user(fhir_user) is not None

        def refuse(kind: str, reason: str) -> None:
            refused.append(NotEnabled(kind=kind, title=KIND_LABELS.get(kind, kind), reason=reason))

        for kind in effective.kind_ids:
            rollout = self.rollout_decision(kind=kind, iss=iss, fhir_user=fhir_user, now=now)
            if placed and rollout.partial:
                arms[kind] = INSIDE if rollout.enabled else OUTSIDE
            if not rollout.enabled:
                refuse(kind, rollout.reason)
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


def _file_entry(site: str, kind: str, rule: FileRule) -> RolloutEntry:
    return RolloutEntry(
        source="file",
        site=site,
        kind=ANY if kind == FILE_ANY_KIND else kind,
        enabled=rule.enabled,
        percentage=float(rule.percent),
        starts=rule.start,
        ends=rule.end,
    )


def _partial(rule: FileRule, today: date) -> bool:
    """Whether the site file's rollout places clinicians by the hash today (0 < share < 100)."""
    return (
        rule.enabled
        and 0 < rule.percent < 100
        and (rule.start is None or rule.start <= today)
        and (rule.end is None or today <= rule.end)
    )


class PolicySource:
    """This process's policy: settings and site file as loaded at start-up, governance's
    state cached (`current()` costs one statement while nothing changed)."""

    def __init__(
        self,
        *,
        site_config: Callable[[], SiteConfig],
        database: Database,
        settings: Settings | None = None,
        on_reload: Callable[[], None] | None = None,
        signal: ChangeSignal | None = None,
    ) -> None:
        self._site_config = site_config
        self._settings = settings
        self._cache = PolicyCache(database, on_reload=on_reload, signal=signal)
        self._policy: Policy | None = None

    def current(self, *, governance_version: int | None = None) -> Policy:
        """The policy; `governance_version`: governance's counter as this request read it
        (`governance.state.version_column`), or None to read it here."""
        state = self._cache.current(version=governance_version)
        policy = self._policy
        site = self._site_config()
        if policy is None or policy.governance is not state or policy.site_config is not site:
            policy = Policy(site_config=site, governance=state, settings=self._settings)
            self._policy = policy
        return policy

"""Engine registry and change control: proposed → evaluated → approved → active, and back.

- evaluated: an evaluation the app ran and stored (`smartapp evaluate --record`) is cited
  by its SHA-256; it must be of this engine version, and every kind the version serves
  must ground at or above the configured minimum (a posted report is never accepted);
- approved: by an admin signed in through an EHR, never the proposer and never the API
  token (two-person rule);
- active: by an admin signed in, never the API token; when the token proposed, the
  activator is not the approver, so two people always took part. The versions it replaces
  (same site scope, a shared kind) become superseded and are remembered, so that one
  rollback restores them;
- kill switches per kind and per engine are read from the database on every call: a
  switch takes effect on the next request, with no cache to expire.

Every transition is a row in `engine_transition` (who, when, why); the views also audit it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from smartapp.config import normalize_issuer
from smartapp.errors import AppError, BadRequest, NotFound
from smartapp.governance.attributes import attributes_for
from smartapp.governance.evaluations import find_run, intact, parse_hash
from smartapp.governance.models import (
    ANY,
    KILL_SCOPES,
    EngineTransition,
    EngineVersion,
    KillSwitchEvent,
)
from smartapp.identity import is_person, normalize_fhir_user
from smartapp.kinds import unknown_engine, unknown_kind

#: Used when the site configuration gives no minimum (the lead wires `min_grounding_rate`).
DEFAULT_MIN_GROUNDING_RATE = 0.95


class ChangeRefused(AppError):
    """Change control refused the step; the message says which rule and what to do."""

    code = "change_refused"
    default_message = "Change control refused this step."
    about_the_request = True


@dataclass(frozen=True, kw_only=True)
class ActiveEngine:
    """The engine version the drafter should use for a kind at a site."""

    id: str
    name: str
    version: str
    model: str | None
    kinds: tuple[str, ...]
    site: str  # the version's scope: an issuer or "*"


def _same_actor(a: str | None, b: str | None) -> bool:
    # Actors are issuer-bound ("ISS|Practitioner/1"): the same id at another EHR differs.
    if not a or not b:
        return False
    if "|" in a and "|" in b:
        return a == b
    # A version proposed before actors were bound names only the id: compare the ids, so
    # that its proposer cannot approve it now under the bound name.
    return normalize_fhir_user(a.rpartition("|")[2]) == normalize_fhir_user(b.rpartition("|")[2])


def _scope(site: str | None) -> str:
    if site is None or site.strip() in ("", ANY):
        return ANY
    return normalize_issuer(site)


def active_engine(session: Session, *, kind: str, site: str) -> ActiveEngine | None:
    """The active version serving `kind` at `site` (a site's own version before an all-sites
    one), or None: then the site configuration's engine serves. Read fresh on every call."""
    rows = session.scalars(
        select(EngineVersion).where(
            EngineVersion.state == "active", EngineVersion.site.in_((_scope(site), ANY))
        )
    ).all()
    return pick_active(rows, kind=kind, site=site)


def active_versions(session: Session) -> list[EngineVersion]:
    """Every active version, any site: the input of `pick_active`."""
    return list(session.scalars(select(EngineVersion).where(EngineVersion.state == "active")))


def pick_active(rows: Iterable[EngineVersion], *, kind: str, site: str) -> ActiveEngine | None:
    """`active_engine` over versions already read (pure)."""
    scopes = (_scope(site), ANY)
    serving = [
        r for r in rows if r.state == "active" and r.site in scopes and kind in (r.kinds or [])
    ]
    if not serving:
        return None
    row = max(serving, key=lambda r: (r.site != ANY, r.activated_at or r.proposed_at))
    return ActiveEngine(
        id=row.id,
        name=row.engine_name,
        version=row.version,
        model=row.model,
        kinds=tuple(row.kinds),
        site=row.site,
    )


def kill_switches(session: Session) -> dict[tuple[str, str], KillSwitchEvent]:
    """The setting in force per (scope, target): the latest row of each."""
    rows = session.scalars(
        select(KillSwitchEvent).order_by(KillSwitchEvent.seq, KillSwitchEvent.at)
    ).all()
    latest: dict[tuple[str, str], KillSwitchEvent] = {}
    for row in rows:
        latest[(row.scope, row.target)] = row
    return latest


def engaged_switches(session: Session) -> frozenset[tuple[str, str]]:
    """The (scope, target) pairs whose kill switch is engaged now."""
    return frozenset(key for key, row in kill_switches(session).items() if row.engaged)


def _engaged(session: Session, scope: str, target: str) -> bool:
    row = session.scalars(
        select(KillSwitchEvent)
        .where(KillSwitchEvent.scope == scope, KillSwitchEvent.target == target)
        .order_by(KillSwitchEvent.seq.desc())
        .limit(1)
    ).first()
    return bool(row and row.engaged)


def is_killed(session: Session, *, kind: str, engine: str) -> bool:
    """True when the kill switch for this kind, or for this engine, is engaged."""
    return _engaged(session, "kind", kind) or _engaged(session, "engine", engine)


def list_versions(session: Session) -> list[EngineVersion]:
    return list(
        session.scalars(
            select(EngineVersion)
            .options(selectinload(EngineVersion.transitions))
            .order_by(EngineVersion.proposed_at.desc())
        )
    )


def _validate_report(report: Any, kinds: list[str]) -> dict[str, float]:
    """The grounding rate per kind from a `smartapp evaluate --json` report."""
    if not isinstance(report, Mapping) or not isinstance(report.get("kinds"), list):
        raise BadRequest(
            'evaluation: expected the `smartapp evaluate --json` report {"kinds": [...]}.'
        )
    rates: dict[str, float] = {}
    for i, entry in enumerate(report["kinds"]):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("kind"), str):
            raise BadRequest(f"evaluation: kinds[{i}] has no kind.")
        rate = entry.get("grounding_rate")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise BadRequest(
                f"evaluation: kinds[{i}] ({entry['kind']}) needs a grounding_rate between 0 and 1."
            )
        rates[entry["kind"]] = float(rate)
    missing = [k for k in kinds if k not in rates]
    if missing:
        raise ChangeRefused(
            f"The evaluation does not cover {', '.join(missing)}: evaluate every kind this "
            "version serves.",
            code="evaluation_incomplete",
        )
    return rates


def _check_engine(report: Mapping[str, Any], row: EngineVersion) -> None:
    """The evaluation must be of this engine version ("name:version" per kind)."""
    expected = f"{row.engine_name}:{row.version}"
    engines = {
        e.get("kind"): e.get("engine") for e in report.get("kinds", []) if isinstance(e, Mapping)
    }
    other = sorted(f"{k} ({engines[k]})" for k in row.kinds if engines.get(k) != expected)
    if other:
        raise ChangeRefused(
            f"The evaluation is not of {expected}: {', '.join(other)}. Evaluate this version "
            "(configure it for these kinds) and cite that run.",
            code="evaluation_mismatch",
        )


class ChangeControl:
    """The state machine. Every method takes the caller's session; the caller commits."""

    def __init__(self, *, min_grounding_rate: float | Callable[[], float]) -> None:
        self._min = min_grounding_rate

    @property
    def min_grounding_rate(self) -> float:
        value = self._min() if callable(self._min) else self._min
        return float(value)

    @staticmethod
    def _get(session: Session, version_id: str, *, lock: bool = False) -> EngineVersion:
        stmt = select(EngineVersion).where(EngineVersion.id == version_id)
        if lock:
            stmt = stmt.with_for_update()
        row = session.scalars(stmt).first()
        if row is None:
            raise NotFound("No such engine version.")
        return row

    @staticmethod
    def _record(
        session: Session,
        row: EngineVersion,
        from_state: str | None,
        to_state: str,
        *,
        actor: str,
        reason: str | None,
        now: datetime,
    ) -> None:
        last = session.scalar(
            select(func.max(EngineTransition.seq)).where(
                EngineTransition.engine_version_id == row.id
            )
        )
        session.add(
            EngineTransition(
                engine_version_id=row.id,
                from_state=from_state,
                to_state=to_state,
                actor=actor,
                reason=reason,
                at=now,
                seq=(last or 0) + 1,
            )
        )

    @classmethod
    def _move(
        cls,
        session: Session,
        row: EngineVersion,
        to_state: str,
        *,
        actor: str,
        reason: str | None,
        now: datetime,
    ) -> None:
        cls._record(session, row, row.state, to_state, actor=actor, reason=reason, now=now)
        row.state = to_state

    @staticmethod
    def _expect(row: EngineVersion, *states: str, doing: str) -> None:
        if row.state not in states:
            raise ChangeRefused(
                f"{row.label} is {row.state.replace('_', ' ')}: it must be "
                f"{' or '.join(s.replace('_', ' ') for s in states)} to {doing}.",
                code="invalid_transition",
            )

    def propose(
        self,
        session: Session,
        *,
        engine: str,
        version: str,
        model: str | None,
        kinds: list[str],
        site: str | None,
        actor: str,
        reason: str | None,
        now: datetime,
    ) -> EngineVersion:
        engine, version = engine.strip(), version.strip()
        if not engine or len(engine) > 64:
            raise BadRequest("engine: give the engine's name (at most 64 characters).")
        if not version or len(version) > 128:
            raise BadRequest("version: give the engine version (at most 128 characters).")
        clean_kinds = sorted({k.strip() for k in kinds if k and k.strip()})
        if not clean_kinds:
            raise BadRequest("kinds: list the suggestion kinds this version serves.")
        for kind in clean_kinds:
            choices = unknown_kind(kind)
            if choices:
                raise BadRequest(f"kinds: {kind[:64]!r} is not a suggestion kind; {choices}.")
        scope = _scope(site)
        existing = session.scalars(
            select(EngineVersion).where(
                EngineVersion.engine_name == engine,
                EngineVersion.version == version,
                EngineVersion.site == scope,
            )
        ).first()
        if existing is not None:
            raise ChangeRefused(
                f"{engine} {version} is already registered ({existing.state}).", code="duplicate"
            )
        row = EngineVersion(
            engine_name=engine,
            version=version,
            model=(model or "").strip() or None,
            kinds=clean_kinds,
            site=scope,
            state="proposed",
            proposed_by=actor,
            proposed_at=now,
            supersedes=[],
            # Kept with the version: its card says what it was registered as.
            source_attributes=attributes_for(engine),
        )
        session.add(row)
        session.flush()
        self._record(session, row, None, "proposed", actor=actor, reason=reason, now=now)
        return row

    def evaluate(
        self,
        session: Session,
        version_id: str,
        *,
        evaluation: Any,
        actor: str,
        reason: str | None,
        now: datetime,
    ) -> EngineVersion:
        """Cite a stored evaluation by its SHA-256; refused when it is not this app's run of
        this version, or a kind grounds below the minimum."""
        digest = parse_hash(evaluation)
        row = self._get(session, version_id, lock=True)
        self._expect(row, "proposed", "evaluated", doing="attach an evaluation")
        run = find_run(session, digest)
        if run is None:
            raise ChangeRefused(
                f"No evaluation {digest[:12]}… was recorded by this app: run `smartapp evaluate "
                "--record` where the app runs and cite the SHA-256 it prints.",
                code="evaluation_unknown",
            )
        if not intact(run):
            raise ChangeRefused(
                f"The stored evaluation {digest[:12]}… no longer matches its hash: it was "
                "changed after it was recorded. Run the evaluation again.",
                code="evaluation_altered",
            )
        report = run.report
        rates = _validate_report(report, list(row.kinds))
        _check_engine(report, row)
        minimum = self.min_grounding_rate
        low = {k: rates[k] for k in row.kinds if rates[k] < minimum}
        if low:
            worst = ", ".join(f"{k} {rate:.1%}" for k, rate in sorted(low.items()))
            raise ChangeRefused(
                f"Grounding below the minimum of {minimum:.1%}: {worst}. "
                "This version cannot go forward.",
                code="grounding_below_minimum",
            )
        row.evaluation = dict(report)
        row.evaluation_sha256 = digest
        row.evaluated_by = actor
        row.evaluated_at = now
        # A new report invalidates an approval given on the old one: evaluated again.
        self._move(session, row, "evaluated", actor=actor, reason=reason, now=now)
        return row

    def approve(
        self, session: Session, version_id: str, *, actor: str, reason: str | None, now: datetime
    ) -> EngineVersion:
        row = self._get(session, version_id, lock=True)
        if row.state == "proposed":
            raise ChangeRefused(
                f"{row.label} has no evaluation: cite a `smartapp evaluate --record` run first.",
                code="not_evaluated",
            )
        self._expect(row, "evaluated", doing="be approved")
        # The two-person rule needs named people: the shared token names nobody.
        if not is_person(actor):
            raise ChangeRefused(
                "Approval needs a named admin signed in at /admin: the API token cannot approve.",
                code="approval_needs_person",
            )
        if _same_actor(actor, row.proposed_by):
            raise ChangeRefused(
                "You proposed this version: a second admin must approve it.", code="self_approval"
            )
        row.approved_by = actor
        row.approved_at = now
        self._move(session, row, "approved", actor=actor, reason=reason, now=now)
        return row

    def activate(
        self, session: Session, version_id: str, *, actor: str, reason: str | None, now: datetime
    ) -> EngineVersion:
        row = self._get(session, version_id, lock=True)
        if row.state in ("proposed", "evaluated"):
            raise ChangeRefused(
                f"{row.label} is {row.state}: it needs an evaluation and a second admin's "
                "approval before it can be activated.",
                code="not_approved",
            )
        self._expect(row, "approved", doing="be activated")
        if not is_person(actor):
            raise ChangeRefused(
                "Activation needs a named admin signed in at /admin: the API token cannot "
                "activate.",
                code="activation_needs_person",
            )
        if not is_person(row.proposed_by) and _same_actor(actor, row.approved_by):
            raise ChangeRefused(
                "The API token proposed this version and you approved it: a second admin must "
                "activate it, so that two people take part.",
                code="two_people",
            )
        replaced = [
            other
            for other in session.scalars(
                select(EngineVersion)
                .where(EngineVersion.state == "active", EngineVersion.site == row.site)
                .with_for_update()
            )
            if set(other.kinds) & set(row.kinds)
        ]
        for other in replaced:
            self._move(
                session,
                other,
                "superseded",
                actor=actor,
                reason=f"replaced by {row.label}",
                now=now,
            )
        row.supersedes = [o.id for o in replaced]
        row.activated_at = now
        row.activated_by = actor
        self._move(session, row, "active", actor=actor, reason=reason, now=now)
        return row

    def rollback(
        self, session: Session, version_id: str, *, actor: str, reason: str | None, now: datetime
    ) -> tuple[EngineVersion, list[EngineVersion]]:
        """Take an active version out and restore the versions it replaced, in one step."""
        row = self._get(session, version_id, lock=True)
        self._expect(row, "active", doing="be rolled back")
        self._move(session, row, "rolled_back", actor=actor, reason=reason, now=now)
        restored: list[EngineVersion] = []
        for previous_id in row.supersedes or []:
            previous = session.get(EngineVersion, previous_id)
            # Only a version still waiting in "superseded" comes back; one rolled back
            # since stays out.
            if previous is not None and previous.state == "superseded":
                previous.activated_at = now
                self._move(
                    session,
                    previous,
                    "active",
                    actor=actor,
                    reason=f"rollback of {row.label}",
                    now=now,
                )
                restored.append(previous)
        return row, restored

    @staticmethod
    def set_kill_switch(
        session: Session,
        *,
        scope: str,
        target: str,
        engaged: bool,
        actor: str,
        reason: str | None,
        now: datetime,
    ) -> KillSwitchEvent:
        if scope not in KILL_SCOPES:
            raise BadRequest(f"scope: must be one of {', '.join(KILL_SCOPES)}.")
        target = target.strip()
        if not target or len(target) > 128:
            raise BadRequest("target: name the kind or the engine.")
        choices = unknown_kind(target) if scope == "kind" else unknown_engine(target)
        if choices:
            # An unknown name would be a switch that silently stops nothing.
            raise BadRequest(f"target: {target[:64]!r} is not a known {scope}; {choices}.")
        if engaged and not (reason and reason.strip()):
            raise BadRequest("reason: say why the kill switch is thrown.")
        seq = (
            session.scalars(
                select(KillSwitchEvent.seq)
                .where(KillSwitchEvent.scope == scope, KillSwitchEvent.target == target)
                .order_by(KillSwitchEvent.seq.desc())
                .limit(1)
            ).first()
            or 0
        )
        row = KillSwitchEvent(
            scope=scope,
            target=target,
            engaged=engaged,
            actor=actor,
            reason=(reason or "").strip() or None,
            at=now,
            seq=seq + 1,
        )
        session.add(row)
        return row

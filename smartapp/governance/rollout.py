"""Phased rollout: per site and per kind, on or off, a stable share of clinicians, dates.

A clinician is placed by `smartapp.placement.bucket`, the app's one placement hash, which
the site file's `[rollout]` uses too. The dashboard's rule in force for a site and kind
takes the place of the site file's: the two never stack.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from smartapp.config import normalize_issuer
from smartapp.errors import BadRequest, NotFound
from smartapp.governance.models import ANY, RolloutRule
from smartapp.identity import normalize_fhir_user
from smartapp.kinds import unknown_kind
from smartapp.placement import BUCKETS
from smartapp.placement import bucket as _bucket

#: What the sidebar shows a clinician left out of a phased rollout.
NOT_YET_FOR_YOU = (
    "Not enabled for you yet at this site: this feature is being rolled out in phases."
)


@dataclass(frozen=True, kw_only=True)
class RolloutDecision:
    enabled: bool
    #: Words the sidebar can show as they are (no PHI, no internal ids).
    reason: str
    rule_id: str | None = None


def bucket(*, site: str, kind: str, fhir_user: str) -> int:
    """The clinician's stable place (0–9999) in the rollout of `kind` at `site`."""
    return _bucket(
        site=normalize_issuer(site), kind=kind, fhir_user=normalize_fhir_user(fhir_user) or ""
    )


def _specificity(rule: RolloutRule) -> int:
    return (2 if rule.site != ANY else 0) + (1 if rule.kind != ANY else 0)


def rules_in_force(session: Session) -> list[RolloutRule]:
    """Every rule not retired (in force now or later): the input of `choose_rule`."""
    return list(session.scalars(select(RolloutRule).where(RolloutRule.retired_at.is_(None))))


def choose_rule(
    rules: Iterable[RolloutRule], *, site: str, kind: str, now: datetime
) -> RolloutRule | None:
    """The rule in force: the most specific one effective now; the newest among equals."""
    site = normalize_issuer(site)
    candidates = [
        r
        for r in rules
        if r.retired_at is None
        and r.site in (site, ANY)
        and r.kind in (kind, ANY)
        and (r.effective_from is None or r.effective_from <= now)
        and (r.effective_to is None or r.effective_to > now)
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda r: (_specificity(r), r.created_at, r.id))


def applicable_rule(session: Session, *, site: str, kind: str, now: datetime) -> RolloutRule | None:
    """The rule in force for `kind` at `site` now, read from the store."""
    site = normalize_issuer(site)
    candidates = session.scalars(
        select(RolloutRule).where(
            RolloutRule.retired_at.is_(None),
            RolloutRule.site.in_((site, ANY)),
            RolloutRule.kind.in_((kind, ANY)),
            or_(RolloutRule.effective_from.is_(None), RolloutRule.effective_from <= now),
            or_(RolloutRule.effective_to.is_(None), RolloutRule.effective_to > now),
        )
    ).all()
    return choose_rule(candidates, site=site, kind=kind, now=now)


def is_enabled(
    session: Session, *, site: str, kind: str, fhir_user: str | None, now: datetime
) -> RolloutDecision:
    """Whether this clinician gets suggestions of `kind` at `site` now. No rule: enabled."""
    rule = applicable_rule(session, site=site, kind=kind, now=now)
    if rule is None:
        return RolloutDecision(enabled=True, reason="Enabled (no rollout rule applies).")
    return decide(rule, site=site, kind=kind, fhir_user=fhir_user)


def decide(rule: RolloutRule, *, site: str, kind: str, fhir_user: str | None) -> RolloutDecision:
    """What a rule in force says for this clinician."""
    if not rule.enabled:
        return RolloutDecision(enabled=False, reason="Not enabled at this site.", rule_id=rule.id)
    if rule.percentage_bp >= BUCKETS:
        return RolloutDecision(enabled=True, reason="Enabled at this site.", rule_id=rule.id)
    user = normalize_fhir_user(fhir_user)
    # Without a fhirUser the clinician cannot be placed in a partial rollout: leave them out.
    if user is None or bucket(site=site, kind=kind, fhir_user=user) >= rule.percentage_bp:
        return RolloutDecision(enabled=False, reason=NOT_YET_FOR_YOU, rule_id=rule.id)
    return RolloutDecision(
        enabled=True, reason="Enabled for you (phased rollout).", rule_id=rule.id
    )


@dataclass(frozen=True, kw_only=True)
class RuleInput:
    site: str
    kind: str
    enabled: bool
    percentage: float = 100.0
    effective_from: datetime | None = None
    effective_to: datetime | None = None
    reason: str | None = None

    def validated(self) -> RuleInput:
        site = self.site.strip()
        if site != ANY:
            site = normalize_issuer(site)
            if not site.startswith(("http://", "https://")):
                raise BadRequest("site: give the issuer's FHIR base URL, or * for every site.")
        kind = self.kind.strip()
        choices = unknown_kind(kind, wildcard=ANY)
        if choices:
            raise BadRequest(f"kind: {choices}.")
        if not 0 <= self.percentage <= 100:
            raise BadRequest("percentage: must be between 0 and 100.")
        if self.effective_from and self.effective_to and self.effective_to <= self.effective_from:
            raise BadRequest("effective_to: must be after effective_from.")
        return RuleInput(
            site=site,
            kind=kind,
            enabled=self.enabled,
            percentage=self.percentage,
            effective_from=self.effective_from,
            effective_to=self.effective_to,
            reason=(self.reason or "").strip()[:2000] or None,
        )


def add_rule(session: Session, rule: RuleInput, *, actor: str, now: datetime) -> RolloutRule:
    """A new rule; it takes precedence over older ones of the same site and kind."""
    rule = rule.validated()
    row = RolloutRule(
        site=rule.site,
        kind=rule.kind,
        enabled=rule.enabled,
        percentage_bp=round(rule.percentage * 100),
        effective_from=rule.effective_from,
        effective_to=rule.effective_to,
        created_by=actor,
        created_at=now,
        reason=rule.reason,
    )
    session.add(row)
    session.flush()
    return row


def retire_rule(session: Session, rule_id: str, *, actor: str, now: datetime) -> RolloutRule:
    row = session.get(RolloutRule, rule_id)
    if row is None or row.retired_at is not None:
        raise NotFound("No such rollout rule in force.")
    row.retired_at = now
    row.retired_by = actor
    return row


def list_rules(session: Session, *, include_retired: bool = False) -> list[RolloutRule]:
    stmt = select(RolloutRule).order_by(RolloutRule.site, RolloutRule.kind, RolloutRule.created_at)
    if not include_retired:
        stmt = stmt.where(RolloutRule.retired_at.is_(None))
    return list(session.scalars(stmt))

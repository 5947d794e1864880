"""One baseline run: a system token, a Bulk `$export` of Encounter and DocumentReference,
aggregates per clinician and week, stored in place of the weeks the run covered.

What is stored is `smartapp.baseline.models` only: counts and medians, no note text, no
patient id. The export's files are asked to be deleted on the server when the run ends.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from smartapp.baseline.aggregate import BaselineAggregator, ClinicianWeek, iso_week, week_start
from smartapp.baseline.models import BaselineRun, BaselineWeek
from smartapp.config import normalize_issuer
from smartapp.db import Database, utcnow
from smartapp.fhir.bulk import BulkDataClient, ExportLevel
from smartapp.smart.backend import BackendConfiguration, BackendServicesClient
from smartapp.smart.client import TokenResponse

log = logging.getLogger(__name__)

EXPORT_TYPES = ("Encounter", "DocumentReference")
#: `_since` filters on lastUpdated: look back further so that the encounter of a note
#: written after DATE, which ended (and was last updated) shortly before it, is exported too.
ENCOUNTER_LOOKBACK = timedelta(days=30)
#: A token is renewed this long before it expires.
TOKEN_MARGIN_SECONDS = 60.0


class SystemToken:
    """A backend-services token for the bulk client (`smartapp.fhir.auth.TokenProvider`):
    renewed by a new client_credentials request (there is no refresh token)."""

    def __init__(
        self,
        client: BackendServicesClient,
        configuration: BackendConfiguration,
        *,
        scope: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._configuration = configuration
        self.scope = scope
        self._clock = clock
        self._token: TokenResponse | None = None
        self._expires_at = 0.0

    def access_token(self) -> str:
        if self._token is None or self._clock() >= self._expires_at:
            return self.refresh()
        return self._token.access_token

    def refresh(self) -> str:
        token = self._client.system_token(self._configuration, scope=self.scope)
        self._token = token
        lifetime = float(token.expires_in) if token.expires_in else 300.0
        self._expires_at = self._clock() + max(0.0, lifetime - TOKEN_MARGIN_SECONDS)
        return token.access_token

    @property
    def granted_scope(self) -> str:
        return self._token.scope if self._token else ""


@dataclass(frozen=True, kw_only=True)
class BaselineReport:
    """What a run read and stored (counts only): the CLI prints it."""

    run_id: str
    issuer: str
    since: date
    go_live: date | None
    go_live_source: str
    level: str
    scope: str
    transaction_time: str
    files: int
    encounters_read: int
    notes_read: int
    notes_counted: int
    clinicians: int
    weeks_stored: int
    skipped: dict[str, int] = field(default_factory=dict)
    export_errors: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "issuer": self.issuer,
            "since": self.since.isoformat(),
            "goLive": self.go_live.isoformat() if self.go_live else None,
            "goLiveSource": self.go_live_source,
            "level": self.level,
            "scope": self.scope,
            "transactionTime": self.transaction_time,
            "files": self.files,
            "encountersRead": self.encounters_read,
            "notesRead": self.notes_read,
            "notesCounted": self.notes_counted,
            "clinicians": self.clinicians,
            "weeksStored": self.weeks_stored,
            "skipped": dict(self.skipped),
            "exportErrors": self.export_errors,
            "stored": "baseline_week: per clinician and ISO week, notes, median lag (hours), "
            "median length (characters); no note text, no patient ids",
        }

    def lines(self) -> list[str]:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        go_live = (
            f"{self.go_live.isoformat()} ({self.go_live_source})"
            if self.go_live
            else "unknown (no --go-live, and the app was never used there)"
        )
        return [
            f"baseline from {self.issuer} ({self.level} $export, scope {self.scope})",
            f"  read: {self.files} file(s), {self.encounters_read} Encounters, "
            f"{self.notes_read} DocumentReferences"
            + (f", {self.export_errors} export error(s)" if self.export_errors else ""),
            f"  counted: {self.notes_counted} notes since {self.since.isoformat()}; "
            f"left out: {skipped}",
            f"  stored: {self.weeks_stored} clinician-week aggregates for {self.clinicians} "
            "clinician(s) (notes, median completion lag in hours, median length in "
            "characters); no note text, no patient ids",
            f"  go-live: {go_live}",
            f"  run: {self.run_id}",
        ]


def run_baseline(
    database: Database,
    *,
    issuer: str,
    since: date,
    client: BackendServicesClient,
    go_live: date | None = None,
    level: ExportLevel | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    bulk_options: dict[str, Any] | None = None,
) -> BaselineReport:
    """Export, aggregate and store. The issuer must already be checked against the allow-list."""
    issuer = normalize_issuer(issuer)
    level = level or ExportLevel("system")
    started = utcnow()
    configuration = client.discover(issuer)
    scope = configuration.system_scope(EXPORT_TYPES)
    tokens = SystemToken(client, configuration, scope=scope, clock=clock)
    bulk = BulkDataClient(
        base_url=issuer, tokens=tokens, clock=clock, sleep=sleep, **(bulk_options or {})
    )
    since_at = datetime(since.year, since.month, since.day, tzinfo=UTC)
    aggregator = BaselineAggregator(since=since_at)
    status_url = bulk.kick_off(types=EXPORT_TYPES, since=since_at - ENCOUNTER_LOOKBACK, level=level)
    export_errors = 0
    try:
        manifest = bulk.wait(status_url)
        # Encounters first: a note's lag needs its encounter's end.
        wanted = [f for f in manifest.output if f.type in EXPORT_TYPES]
        wanted.sort(key=lambda f: f.type != "Encounter")
        for export_file in wanted:
            for resource in bulk.records(
                export_file, requires_access_token=manifest.requires_access_token
            ):
                aggregator.add(resource)
        for error_file in manifest.error:
            for _outcome in bulk.records(
                error_file, requires_access_token=manifest.requires_access_token
            ):
                export_errors += 1
    finally:
        bulk.delete(status_url)
    weeks = aggregator.weeks()
    run_id = uuid.uuid4().hex
    with database.session() as s:
        chosen, source = choose_go_live(s, issuer=issuer, given=go_live)
        s.add(
            BaselineRun(
                id=run_id,
                issuer=issuer,
                since=since,
                go_live=chosen,
                level=_level_text(level),
                started_at=started,
                finished_at=utcnow(),
                transaction_time=manifest.transaction_time[:64],
                encounters_read=aggregator.encounters_read,
                notes_read=aggregator.notes_read,
                notes_counted=sum(w.notes for w in weeks),
                clinicians=len({w.fhir_user for w in weeks}),
                weeks_stored=len(weeks),
                skipped=dict(aggregator.skipped),
            )
        )
        s.flush()  # the weeks point at the run
        stored = store_weeks(s, issuer=issuer, since=since, weeks=weeks, run_id=run_id)
    return BaselineReport(
        run_id=run_id,
        issuer=issuer,
        since=since,
        go_live=chosen,
        go_live_source=source,
        level=_level_text(level),
        scope=tokens.granted_scope or scope,
        transaction_time=manifest.transaction_time,
        files=len(manifest.output),
        encounters_read=aggregator.encounters_read,
        notes_read=aggregator.notes_read,
        notes_counted=sum(w.notes for w in weeks),
        clinicians=len({w.fhir_user for w in weeks}),
        weeks_stored=stored,
        skipped=dict(aggregator.skipped),
        export_errors=export_errors,
    )


def store_weeks(
    s: Session, *, issuer: str, since: date, weeks: list[ClinicianWeek], run_id: str
) -> int:
    """Replace this issuer's weeks from `since`'s week on with the run's (a re-run is no double)."""
    first_week = week_start(iso_week(datetime(since.year, since.month, since.day, tzinfo=UTC)))
    s.execute(
        delete(BaselineWeek).where(
            BaselineWeek.issuer == issuer, BaselineWeek.week_start >= first_week
        )
    )
    # Rows of older runs whose weeks this run replaced entirely are gone; the runs stay.
    for week in weeks:
        s.merge(
            BaselineWeek(
                issuer=issuer,
                fhir_user=week.fhir_user,
                week=week.week,
                week_start=week.week_start,
                notes=week.notes,
                notes_with_lag=week.notes_with_lag,
                median_lag_hours=week.median_lag_hours,
                notes_with_length=week.notes_with_length,
                median_note_chars=week.median_note_chars,
                run_id=run_id,
            )
        )
    return len(weeks)


def choose_go_live(s: Session, *, issuer: str, given: date | None) -> tuple[date | None, str]:
    """--go-live; else the last run's; else the first day the app showed a suggestion there."""
    if given is not None:
        return given, "--go-live"
    previous = s.scalars(
        select(BaselineRun.go_live)
        .where(BaselineRun.issuer == issuer, BaselineRun.go_live.is_not(None))
        .order_by(BaselineRun.finished_at.desc())
        .limit(1)
    ).first()
    if previous is not None:
        return previous, "the previous run's"
    from smartapp.feedback.models import ShownSuggestion

    first = s.scalar(
        select(func.min(ShownSuggestion.shown_at)).where(ShownSuggestion.site == issuer)
    )
    if first is not None:
        return first.astimezone(UTC).date(), "the first suggestion the app showed there"
    return None, "unknown"


def _level_text(level: ExportLevel) -> str:
    return f"group:{level.group_id}" if level.kind == "group" else level.kind

"""Recording what was shown and what the clinician decided, durably."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from rapidfuzz.distance import Levenshtein
from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, selectinload

from smartapp.db import Database, utcnow
from smartapp.errors import BadRequest, NotFound
from smartapp.feedback.models import (
    ACTIONS,
    REJECT_REASONS,
    Decision,
    DraftedKind,
    ShownSuggestion,
)
from smartapp.suggestions.interfaces import Suggestion

MAX_TEXT = 20_000
MAX_COMMENT = 2_000

#: Why a stand-in stays after the LLM's drafts of its kind arrived.
KEPT = "you decided on it before the AI draft arrived, which follows it"


@dataclass(frozen=True, kw_only=True)
class ShownBy:
    """Who was shown a set of suggestions, for which visit, and from which snapshot.

    The rows belong to the visit (`visit_key`, see smartapp.notes.visits): every launch of
    it sees them and may decide on them; `launch_session_id` is the launch that drafted them.
    """

    launch_session_id: str
    visit_key: str
    snapshot_key: str
    site: str
    fhir_user: str | None
    patient_id: str
    #: The patient's age band and sex (smartapp.feedback.demographics), kept on new rows.
    age_band: str | None = None
    sex: str | None = None


class _CarriedElsewhere(Exception):
    """Another launch of the visit carried a row first: this draft is discarded."""


def edit_distance(before: str, after: str) -> int:
    return int(Levenshtein.distance(before, after))


#: The forwarding hook, told (the decision's transaction, its id, the suggestion) before
#: the decision commits: what it records (a feedback forward) commits with it or not at
#: all, so an answer never fails about a decision that was recorded, nor loses its forward.
DecisionHook = Callable[[Session, str, ShownSuggestion], None]


class FeedbackStore:
    def __init__(self, database: Database, *, on_decision: DecisionHook | None = None) -> None:
        self._db = database
        self._on_decision = on_decision

    def shown(self, by: ShownBy) -> list[ShownSuggestion]:
        """The suggestions already shown for this visit and snapshot, in order."""
        with self._db.session() as session:
            return self._shown(session, by)

    @staticmethod
    def _shown(session: Session, by: ShownBy) -> list[ShownSuggestion]:
        rows = session.scalars(
            select(ShownSuggestion)
            .where(
                ShownSuggestion.visit_key == by.visit_key,
                ShownSuggestion.snapshot_key == by.snapshot_key,
            )
            # One statement with the decisions joined: this runs on every sidebar request.
            .options(joinedload(ShownSuggestion.decisions))
            .order_by(ShownSuggestion.position)
        )
        return list(rows.unique())

    def drafted(self, by: ShownBy) -> set[tuple[str, str]]:
        """The (kind, engine choice) pairs already drafted for this visit and snapshot."""
        with self._db.session() as session:
            rows = session.execute(
                select(DraftedKind.kind, DraftedKind.choice).where(
                    DraftedKind.visit_key == by.visit_key,
                    DraftedKind.snapshot_key == by.snapshot_key,
                )
            )
            return {(kind, choice) for kind, choice in rows}

    def drafted_by_snapshot(
        self, visit_key: str
    ) -> dict[str, dict[tuple[str, str], datetime | None]]:
        """`drafted` for every snapshot of this visit, in one statement, by snapshot key;
        each (kind, choice) with the instant its LLM draft is due by, while it is on its way."""
        return self.drafted_by_snapshot_with(visit_key, None)[0]

    def drafted_by_snapshot_with(
        self, visit_key: str, alongside: Any
    ) -> tuple[dict[str, dict[tuple[str, str], datetime | None]], Any]:
        """`drafted_by_snapshot`, and the value of `alongside` (an uncorrelated scalar
        subquery, or None) read in the same statement: None when the visit drafted nothing.
        A request that needs another single value anyway saves a statement."""
        columns: list[Any] = [
            DraftedKind.snapshot_key,
            DraftedKind.kind,
            DraftedKind.choice,
            DraftedKind.pending_until,
        ]
        if alongside is not None:
            columns.append(alongside)
        extra: Any = None
        with self._db.session() as session:
            rows = session.execute(select(*columns).where(DraftedKind.visit_key == visit_key))
            drafted: dict[str, dict[tuple[str, str], datetime | None]] = {}
            for row in rows:
                key, kind, choice, until = row[:4]
                if alongside is not None:
                    extra = row[4]
                previous = drafted.setdefault(key, {}).get((kind, choice))
                # Two launches of the visit may each have drafted it: the later due time counts.
                if (kind, choice) not in drafted[key] or (
                    until is not None and (previous is None or until > previous)
                ):
                    drafted[key][(kind, choice)] = until
            return drafted, extra

    def latest_snapshot_key(self, visit_key: str) -> str | None:
        """The visit's current set: the newest chart read drafted from (by any launch).

        Snapshot keys are the reads' UTC fetch times, so the newest read wins whichever
        launch drafted last; "unknown" (a snapshot without a fetch time) only when alone.
        """
        with self._db.session() as session:
            return _newest_key(session, visit_key)

    def record_draft(
        self,
        by: ShownBy,
        choices: Mapping[str, str],
        suggestions: Sequence[Suggestion],
        *,
        pending_until: Mapping[str, datetime] | None = None,
    ) -> bool:
        """Persist freshly drafted kinds and their suggestions, all or nothing.

        A suggestion identical to one drafted from the visit's previous snapshot (same
        kind, engine and text: the chart did not change what it says) keeps that row, so
        its id and the clinician's decision survive a refresh of the chart and a new
        launch of the same visit. If another request drafted the same kinds first, or
        carried the same rows, its rows stand, these are discarded and the answer is False.
        `pending_until` names the kinds whose LLM draft is on its way (their suggestions
        here are the rules standing in) and when it is due by.
        """
        pending = pending_until or {}
        with self._db.session() as session:
            previous_key = _newest_key(session, by.visit_key, besides=by.snapshot_key)
        if _older(by.snapshot_key, previous_key):
            # A newer read of the chart (another tab) is the visit's set already: this
            # older one must not take its rows back.
            return False
        try:
            with self._db.session() as session:
                last = session.scalar(
                    select(func.max(ShownSuggestion.position)).where(
                        ShownSuggestion.visit_key == by.visit_key,
                        ShownSuggestion.snapshot_key == by.snapshot_key,
                    )
                )
                position = -1 if last is None else last
                now = utcnow()
                session.add_all(
                    DraftedKind(
                        launch_session_id=by.launch_session_id,
                        visit_key=by.visit_key,
                        snapshot_key=by.snapshot_key,
                        kind=kind,
                        choice=choice,
                        drafted_at=now,
                        pending_until=pending.get(kind),
                    )
                    for kind, choice in choices.items()
                )
                session.flush()
                if _newest_key(session, by.visit_key, besides=by.snapshot_key) != previous_key:
                    # Another launch of the visit drafted a newer read meanwhile (and may
                    # have carried the rows this one would): its set stands.
                    raise _CarriedElsewhere
                earlier = self._carryable(session, by, previous_key, choices)
                for s in suggestions:
                    position += 1
                    choice = choices.get(s.kind, "")
                    matches = earlier.get((s.kind, choice, s.engine.name, s.engine.version, s.text))
                    if matches:
                        self._carry(session, matches.pop(0), by, s, position, previous_key)
                        continue
                    session.add(_new_row(by, s, choice=choice, position=position, now=now))
        except (IntegrityError, _CarriedElsewhere):
            return False
        return True

    def replace_drafted(
        self, by: ShownBy, kind: str, choice: str, suggestions: Sequence[Suggestion] | None
    ) -> bool:
        """The LLM's drafts of `kind` take the place of the rules that stood in for them.

        A stand-in the clinician has not decided on is replaced (its place in the list
        goes to the LLM's suggestions); one already decided stays, decision and all, and
        says why. A suggestion identical to a stand-in keeps that row. `None` (the run
        failed) leaves the stand-ins as they are. False when the kind was not waiting
        here any more (already arrived, or the chart has been read again since).
        """
        for _attempt in range(3):
            try:
                return self._replace_drafted(by, kind, choice, suggestions)
            except IntegrityError:
                # Another kind's drafts took the same positions at the same moment.
                continue
        return False

    def _replace_drafted(
        self, by: ShownBy, kind: str, choice: str, suggestions: Sequence[Suggestion] | None
    ) -> bool:
        with self._db.session() as session:
            # Written first: it takes the store's write lock (SQLite) before anything is read.
            settled: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                update(DraftedKind)
                .where(
                    DraftedKind.launch_session_id == by.launch_session_id,
                    DraftedKind.snapshot_key == by.snapshot_key,
                    DraftedKind.kind == kind,
                    DraftedKind.choice == choice,
                    DraftedKind.pending_until.is_not(None),
                )
                .values(pending_until=None)
            )
            if not settled.rowcount or suggestions is None:
                return False
            newest = session.scalar(
                select(func.max(DraftedKind.snapshot_key)).where(
                    DraftedKind.visit_key == by.visit_key,
                    DraftedKind.snapshot_key != "unknown",
                )
            )
            if newest is not None and newest > by.snapshot_key:
                return False  # the chart was read again: that snapshot's drafts stand
            standing = list(
                session.scalars(
                    select(ShownSuggestion)
                    .where(
                        ShownSuggestion.visit_key == by.visit_key,
                        ShownSuggestion.snapshot_key == by.snapshot_key,
                        ShownSuggestion.kind == kind,
                        ShownSuggestion.choice == choice,
                    )
                    .order_by(ShownSuggestion.position)
                )
            )
            same: dict[tuple[str, str, str], list[ShownSuggestion]] = {}
            for row in standing:
                same.setdefault((row.engine_name, row.engine_version, row.text), []).append(row)
            last = session.scalar(
                select(func.max(ShownSuggestion.position)).where(
                    ShownSuggestion.visit_key == by.visit_key,
                    ShownSuggestion.snapshot_key == by.snapshot_key,
                )
            )
            position = -1 if last is None else last
            now = utcnow()
            kept: set[str] = set()
            for s in suggestions:
                matches = same.get((s.engine.name, s.engine.version, s.text))
                if matches:
                    row = matches.pop(0)
                    kept.add(row.id)
                    row.title, row.engine_extra = s.title, s.engine.to_json()
                    row.statements = [st.to_json() for st in s.statements]
                    row.verification = s.verification.to_json() if s.verification else {}
                    continue
                position += 1
                session.add(_new_row(by, s, choice=choice, position=position, now=now))
            replaced = [row for row in standing if row.id not in kept]
            if replaced:
                ids = [row.id for row in replaced]
                session.flush()
                # `decided_at IS NULL` is checked again on the row itself (PostgreSQL
                # re-reads a row another transaction just decided), so a decision recorded
                # meanwhile keeps its card.
                session.execute(
                    delete(ShownSuggestion)
                    .where(ShownSuggestion.id.in_(ids), ShownSuggestion.decided_at.is_(None))
                    .execution_options(synchronize_session=False)
                )
                extra = {
                    k: v for k, v in (replaced[0].engine_extra or {}).items() if k != "interim"
                }
                extra.update(fallbackReason=KEPT, kept=True)
                session.execute(
                    update(ShownSuggestion)
                    .where(ShownSuggestion.id.in_(ids), ShownSuggestion.decided_at.is_not(None))
                    .values(engine_extra=extra)
                    .execution_options(synchronize_session=False)
                )
            return True

    @staticmethod
    def _carry(
        session: Session,
        row: ShownSuggestion,
        by: ShownBy,
        s: Suggestion,
        position: int,
        previous_key: str | None,
    ) -> None:
        """Move a row (its id, shown time and decisions) to the new snapshot.

        Conditional on it still being where it was read: two launches of one visit
        drafting at once must not both take it (the second is discarded, and drafts again
        from the first one's snapshot on its next request).
        """
        moved: CursorResult[Any] = session.execute(  # type: ignore[assignment]
            update(ShownSuggestion)
            .where(ShownSuggestion.id == row.id, ShownSuggestion.snapshot_key == previous_key)
            .values(
                launch_session_id=by.launch_session_id,
                snapshot_key=by.snapshot_key,
                position=position,
                statements=[st.to_json() for st in s.statements],
                citations=[c.to_json() for c in s.citations],
                verification=s.verification.to_json() if s.verification else {},
            )
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount != 1:
            raise _CarriedElsewhere

    @staticmethod
    def _carryable(
        session: Session, by: ShownBy, previous_key: str | None, choices: Mapping[str, str]
    ) -> dict[tuple[str, str, str, str, str], list[ShownSuggestion]]:
        if previous_key is None or previous_key == by.snapshot_key:
            return {}
        rows = session.scalars(
            select(ShownSuggestion)
            .where(
                ShownSuggestion.visit_key == by.visit_key,
                ShownSuggestion.snapshot_key == previous_key,
                ShownSuggestion.kind.in_(list(choices)),
            )
            .order_by(ShownSuggestion.position)
        )
        found: dict[tuple[str, str, str, str, str], list[ShownSuggestion]] = {}
        for row in rows:
            if row.choice != choices[row.kind]:
                continue
            key = (row.kind, row.choice, row.engine_name, row.engine_version, row.text)
            found.setdefault(key, []).append(row)
        return found

    def rows(self, visit_key: str, ids: Sequence[str]) -> list[ShownSuggestion]:
        """This visit's rows with these ids (e.g. the suggestions a saved draft used)."""
        if not ids:
            return []
        with self._db.session() as session:
            return list(
                session.scalars(
                    select(ShownSuggestion)
                    .where(ShownSuggestion.visit_key == visit_key, ShownSuggestion.id.in_(ids))
                    .options(selectinload(ShownSuggestion.decisions))
                )
            )

    def get(self, visit_key: str, suggestion_id: str) -> ShownSuggestion:
        with self._db.session() as session:
            row = session.scalars(
                select(ShownSuggestion)
                .where(ShownSuggestion.id == suggestion_id)
                .options(selectinload(ShownSuggestion.decisions))
            ).first()
            # Another visit's suggestion is reported as absent, not forbidden: no probing.
            if row is None or row.visit_key != visit_key:
                raise NotFound("No such suggestion in this visit.")
            return row

    def decide(
        self,
        visit_key: str,
        suggestion_id: str,
        *,
        action: str,
        text: str | None = None,
        reason: str | None = None,
        comment: str | None = None,
        action_count: int = 1,
        now: datetime | None = None,
    ) -> Decision:
        if action not in ACTIONS:
            raise BadRequest(f"action must be one of {', '.join(ACTIONS)}.")
        if text is not None and not isinstance(text, str):
            raise BadRequest("text must be a string.")
        if action == "edit" and not (text and text.strip()):
            raise BadRequest("An edit needs the edited text.")
        if text is not None and len(text) > MAX_TEXT:
            raise BadRequest(f"text is longer than {MAX_TEXT} characters.")
        reason, comment = _coded_reason(reason, comment)
        now = now or utcnow()
        with self._db.session() as session:
            # Marked decided in the statement that finds it: a stand-in the LLM's draft is
            # replacing either keeps this decision or is gone (and the clinician is told).
            marked: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                update(ShownSuggestion)
                .where(ShownSuggestion.id == suggestion_id, ShownSuggestion.visit_key == visit_key)
                .values(decided_at=now)
                .execution_options(synchronize_session=False)
            )
            row = session.get(ShownSuggestion, suggestion_id) if marked.rowcount else None
            if row is None or row.visit_key != visit_key:
                raise NotFound(
                    "No such suggestion in this visit (an AI draft may have replaced it: "
                    "reload the suggestions)."
                )
            final_text = text if action == "edit" else (row.text if action == "accept" else None)
            decision = Decision(
                suggestion_id=row.id,
                action=action,
                final_text=final_text,
                reason=reason,
                comment=comment,
                decided_at=now,
                seconds_to_decision=max(0.0, (now - row.shown_at).total_seconds()),
                action_count=max(1, int(action_count)),
                edit_distance=edit_distance(row.text, final_text)
                if final_text is not None
                else None,
            )
            session.add(decision)
            if self._on_decision is not None:
                session.flush()
                self._on_decision(session, decision.id, row)
        return decision


def _older(key: str, than: str | None) -> bool:
    return than is not None and "unknown" not in (key, than) and key < than


def _newest_key(session: Session, visit_key: str, *, besides: str | None = None) -> str | None:
    keys = select(func.max(DraftedKind.snapshot_key)).where(DraftedKind.visit_key == visit_key)
    if besides is not None:
        keys = keys.where(DraftedKind.snapshot_key != besides)
    newest = session.scalar(keys.where(DraftedKind.snapshot_key != "unknown"))
    if newest is None and besides != "unknown":
        newest = session.scalar(keys.where(DraftedKind.snapshot_key == "unknown"))
    return newest


def _coded_reason(reason: str | None, comment: str | None) -> tuple[str | None, str | None]:
    """Keep coded override reasons; free text becomes `other` with the text as the comment."""
    if comment is not None:
        comment = str(comment)[:MAX_COMMENT].strip() or None
    if reason is None or str(reason).strip() == "":
        return None, comment
    code = str(reason).strip().lower().replace(" ", "_").replace("-", "_")
    if code in REJECT_REASONS:
        return code, comment
    free = str(reason).strip()[:MAX_COMMENT]
    return "other", f"{free}\n{comment}" if comment else free


def _new_row(
    by: ShownBy, s: Suggestion, *, choice: str, position: int, now: datetime
) -> ShownSuggestion:
    return ShownSuggestion(
        launch_session_id=by.launch_session_id,
        visit_key=by.visit_key,
        snapshot_key=by.snapshot_key,
        site=by.site,
        fhir_user=by.fhir_user,
        patient_id=by.patient_id,
        position=position,
        kind=s.kind,
        choice=choice,
        title=s.title,
        text=s.text,
        statements=[st.to_json() for st in s.statements],
        citations=[c.to_json() for c in s.citations],
        engine_name=s.engine.name,
        engine_version=s.engine.version,
        engine_extra=s.engine.to_json(),
        verification=s.verification.to_json() if s.verification else {},
        age_band=by.age_band,
        sex=by.sex,
        safety_hits=safety_hits(s),
        shown_at=now,
        decisions=[],
    )


def safety_hits(s: Suggestion) -> int:
    """How many of its statements are medication safety-check hits (a rule of the table)."""
    ids = safety_rule_ids()
    return sum(1 for st in s.statements if st.rule_id in ids)


@lru_cache(maxsize=1)
def safety_rule_ids() -> frozenset[str]:
    from smartapp.suggestions.safety import rules

    return frozenset(rule.id for rule in rules())

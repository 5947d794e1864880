"""Seeded feedback whose metrics are computed by hand in the tests (see test_metrics.py).

Weeks: 2026-11-16 (Mon) starts ISO week 2026-W47; 2026-11-23 starts 2026-W48.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from smartapp.feedback.models import Decision, ShownSuggestion
from smartapp.notes.models import SavedNote

SITE_A = "https://a.example/fhir"
SITE_B = "https://b.example/fhir"
RULES = ("builtin-rules", "1.0.0")
LLM = ("llm", "m@2")
W47 = datetime(2026, 11, 16, 10, 0, tzinfo=UTC)
W48 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Seeded:
    kind: str
    site: str
    engine: tuple[str, str]
    shown_at: datetime
    #: (action, seconds after shown, edit distance) in the order decided.
    decisions: tuple[tuple[str, float, int | None], ...]


#: Eight suggestions; the comment gives each one's outcome (its latest decision).
SUGGESTIONS: tuple[Seeded, ...] = (
    Seeded("summary", SITE_A, RULES, W47, (("accept", 10, 0),)),  # 1 accept
    Seeded("summary", SITE_A, RULES, W47, (("edit", 20, 5),)),  # 2 edit
    Seeded("summary", SITE_B, LLM, W47, (("edit", 30, 15),)),  # 3 edit
    Seeded("summary", SITE_B, LLM, W48, (("reject", 40, None),)),  # 4 reject
    Seeded("care_gaps", SITE_A, LLM, W48, (("accept", 5, 0), ("flag", 60, None))),  # 5 flag
    Seeded("care_gaps", SITE_A, RULES, W48, ()),  # 6 undecided
    Seeded("care_gaps", SITE_B, RULES, W48, (("edit", 12, 2),)),  # 7 edit
    # Sunday 23:30 UTC is still W48 (and would be Monday W49 east of UTC).
    Seeded(
        "problem_list",
        SITE_B,
        LLM,
        datetime(2026, 11, 29, 23, 30, tzinfo=UTC),
        (("reject", 8, None),),
    ),  # 8 reject
)


def add_suggestion(
    session: Session,
    seeded: Seeded,
    *,
    number: int,
    text: str = "Suggested text",
    patient_id: str = "p1",
) -> ShownSuggestion:
    row = ShownSuggestion(
        id=f"s{number:03d}",
        launch_session_id=f"launch-{number}",
        visit_key=f"visit-{number}",
        snapshot_key="k",
        site=seeded.site,
        fhir_user="Practitioner/9",
        patient_id=patient_id,
        position=0,
        kind=seeded.kind,
        title=seeded.kind.replace("_", " ").title(),
        text=text,
        statements=[{"text": text, "citations": [], "verified": True, "issues": []}],
        citations=[],
        engine_name=seeded.engine[0],
        engine_version=seeded.engine[1],
        engine_extra={},
        verification={"checked": 1, "passed": 1, "dropped": 0, "unverifiedShown": 0},
        shown_at=seeded.shown_at,
    )
    session.add(row)
    for i, (action, seconds, distance) in enumerate(seeded.decisions):
        session.add(
            Decision(
                id=f"d{number:03d}{i}",
                suggestion_id=row.id,
                action=action,
                final_text=None,
                decided_at=seeded.shown_at + timedelta(seconds=seconds),
                seconds_to_decision=seconds,
                edit_distance=distance,
            )
        )
    return row


def seed_feedback(session: Session) -> None:
    for number, seeded in enumerate(SUGGESTIONS, start=1):
        add_suggestion(session, seeded, number=number)
    session.flush()
    session.add_all(
        [
            SavedNote(
                visit_key="visit-1",
                launch_session_id="launch-1",
                site=SITE_A,
                patient_id="p1",
                fhir_user="Practitioner/9",
                text="note",
                suggestion_ids=["s001", "s002"],
                engines=[list(RULES)],
                status="in_chart",
                created_at=W47 + timedelta(minutes=5),
                launched_at=W47 + timedelta(minutes=1),
                seconds_in_sidebar=90.0,
                chars_total=400,
                chars_accepted=250,
                chars_edited=50,
                edits=2,
            ),
            SavedNote(
                visit_key="visit-7",
                launch_session_id="launch-7",
                site=SITE_B,
                patient_id="p2",
                fhir_user="Practitioner/9",
                text="note",
                suggestion_ids=["s007", "s003"],
                engines=[list(RULES), list(LLM)],
                status="pending",
                created_at=W48 + timedelta(minutes=5),
                launched_at=W48 + timedelta(minutes=3),
                seconds_in_sidebar=30.0,
                chars_total=100,
                chars_accepted=0,
                chars_edited=20,
                edits=1,
            ),
        ]
    )

"""Unit: the clinician pulse is asked after every Nth note of a clinician, answered once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from smartapp.db import Database
from smartapp.errors import BadRequest, NotFound
from smartapp.feedback.models import new_id
from smartapp.notes.models import SavedNote
from smartapp.notes.pulse import PulseResponse, answer, maybe_ask

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
SITE = "https://ehr.example/fhir"


@pytest.fixture
def db(tmp_path: Path):
    database = Database(f"sqlite:///{tmp_path / 'pulse.db'}")
    database.create_all()
    yield database
    database.dispose()


def save(s, user="Practitioner/1", revision=1):
    note = SavedNote(
        visit_key=new_id(), launch_session_id="l1", site=SITE, patient_id="p1",
        fhir_user=user, text="n", revision=revision,
    )  # fmt: skip
    s.add(note)
    s.flush()
    return note


def test_every_third_note_of_a_clinician_is_sampled(db):
    with db.session() as s:
        asked = [maybe_ask(s, save(s), every=3, now=NOW) is not None for _ in range(9)]
        other = maybe_ask(s, save(s, user="Practitioner/2"), every=3, now=NOW)
    assert asked == [False, False, True] * 3
    assert other is None  # the other clinician's first note


def test_off_without_a_clinician_and_only_on_a_first_save(db):
    with db.session() as s:
        assert maybe_ask(s, save(s), every=0, now=NOW) is None
        assert maybe_ask(s, save(s, user=None), every=1, now=NOW) is None
        assert maybe_ask(s, save(s, revision=2), every=1, now=NOW) is None


def test_only_the_asked_clinician_answers_with_scores_from_1_to_5(db):
    with db.session() as s:
        note = save(s)
        question = maybe_ask(s, note, every=1, now=NOW)
        assert question is not None and len(question.to_json()["questions"]) == 2
        with pytest.raises(NotFound):
            answer(
                s, {"note": note.id, "savedTime": 4}, site=SITE, fhir_user="Practitioner/9", now=NOW
            )
        for bad in ({"savedTime": 6}, {"checking": "3"}, {}, {"skipped": "yes"}):
            with pytest.raises(BadRequest):
                answer(s, {"note": note.id, **bad}, site=SITE, fhir_user="Practitioner/1", now=NOW)
        row = answer(s, {"note": note.id, "savedTime": 4, "checking": 2}, site=SITE,
                     fhir_user="Practitioner/1", now=NOW)  # fmt: skip
        assert (row.saved_time, row.checking, row.skipped) == (4, 2, False)
        # Once answered, saving again does not ask again.
        assert maybe_ask(s, note, every=1, now=NOW) is None
        skipped = save(s)
        maybe_ask(s, skipped, every=1, now=NOW)
        answer(s, {"note": skipped.id, "skipped": True}, site=SITE, fhir_user="Practitioner/1",
               now=NOW)  # fmt: skip
        assert s.query(PulseResponse).filter_by(skipped=True).count() == 1

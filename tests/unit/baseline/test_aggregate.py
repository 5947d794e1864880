"""Unit: the baseline's maths — which notes count, their clinician and ISO week, completion
lag against the encounter's end, length from the inline text or attachment.size."""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime

from smartapp.baseline.aggregate import aggregate, iso_week, note_length, parse_instant, week_start


def encounter(eid, end):
    return {"resourceType": "Encounter", "id": eid, "period": {"start": end, "end": end}}


def note(
    nid,
    *,
    when,
    author="Practitioner/dr-a",
    encounter_id=None,
    text=None,
    size=None,
    status="current",
    doc_status="final",
):
    attachment = {"contentType": "text/plain; charset=utf-8"}
    if text is not None:
        attachment["data"] = base64.b64encode(text.encode()).decode()
    if size is not None:
        attachment["size"] = size
    resource = {
        "resourceType": "DocumentReference",
        "id": nid,
        "status": status,
        "date": when,
        "author": [{"reference": author}] if author else [],
        "content": [{"attachment": attachment}],
    }
    if doc_status is not None:
        resource["docStatus"] = doc_status
    if encounter_id:
        resource["context"] = {"encounter": [{"reference": f"Encounter/{encounter_id}"}]}
    return resource


def test_lag_and_length_medians_per_clinician_and_week():
    resources = [
        note("n1", when="2026-10-05T12:00:00Z", encounter_id="e1", text="abcd"),
        note("n2", when="2026-10-06T18:00:00Z", encounter_id="e2", text="abcdefgh"),
        note("n3", when="2026-10-07T09:00:00Z", encounter_id="e3", size=30),
        # Encounters listed after the notes: aggregate() reads them first.
        encounter("e1", "2026-10-05T10:00:00Z"),  # 2 h
        encounter("e2", "2026-10-05T18:00:00Z"),  # 24 h
        encounter("e3", "2026-10-07T08:00:00+02:00"),  # 06:00Z: 3 h
    ]
    [week] = aggregate(resources)
    assert (week.fhir_user, week.week, week.week_start) == (
        "Practitioner/dr-a",
        "2026-W41",
        date(2026, 10, 5),
    )
    assert week.notes == 3
    assert (week.notes_with_lag, week.median_lag_hours) == (3, 3.0)
    assert (week.notes_with_length, week.median_note_chars) == (3, 8.0)


def test_a_note_without_its_encounter_counts_but_has_no_lag():
    [week] = aggregate([note("n1", when="2026-10-05T12:00:00Z", encounter_id="gone", text="x")])
    assert week.notes == 1
    assert (week.notes_with_lag, week.median_lag_hours) == (0, None)


def test_a_note_dated_before_its_encounter_ended_has_a_negative_lag():
    [week] = aggregate(
        [
            encounter("e1", "2026-10-05T12:00:00Z"),
            note("n1", when="2026-10-05T11:30:00Z", encounter_id="e1"),
        ]
    )
    assert week.median_lag_hours == -0.5


def test_notes_left_out_are_counted_by_reason():
    from smartapp.baseline.aggregate import BaselineAggregator

    aggregator = BaselineAggregator(since=datetime(2026, 10, 1, tzinfo=UTC))
    for resource in [
        note("a", when="2026-10-05T12:00:00Z", status="entered-in-error"),
        note("b", when="2026-10-05T12:00:00Z", doc_status="preliminary"),
        note("c", when="2026-09-30T23:59:00Z"),
        note("d", when=None),
        note("e", when="2026-10-05T12:00:00Z", author="Patient/p1"),
        note("f", when="2026-10-05T12:00:00Z", doc_status=None),
    ]:
        aggregator.add(resource)
    assert dict(aggregator.skipped) == {
        "entered_in_error": 1,
        "not_final": 1,
        "before_since": 1,
        "undated": 1,
        "no_practitioner_author": 1,
    }
    assert [w.notes for w in aggregator.weeks()] == [1]


def test_an_absolute_author_reference_is_the_same_clinician():
    weeks = aggregate(
        [
            note(
                "a", when="2026-10-05T12:00:00Z", author="https://ehr.test/fhir/Practitioner/dr-a"
            ),
            note("b", when="2026-10-06T12:00:00Z", author="Practitioner/dr-a"),
        ]
    )
    assert [(w.fhir_user, w.notes) for w in weeks] == [("Practitioner/dr-a", 2)]


def test_weeks_are_iso_weeks_in_utc():
    # Sunday 23:30 in New York is Monday in UTC: the next ISO week.
    assert iso_week(parse_instant("2026-10-04T23:30:00-04:00")) == "2026-W41"
    assert iso_week(parse_instant("2026-10-04T23:30:00Z")) == "2026-W40"
    assert week_start("2026-W53") == date(2026, 12, 28)
    assert parse_instant("2026-10-04") == datetime(2026, 10, 4, tzinfo=UTC)
    assert parse_instant("not a date") is None


def test_length_prefers_inline_text_over_size_and_ignores_non_text_data():
    text_note = note("a", when="2026-10-05T12:00:00Z", text="héllo", size=999)
    assert note_length(text_note) == 5  # characters, not bytes
    pdf = note("b", when="2026-10-05T12:00:00Z", size=1234)
    pdf["content"][0]["attachment"].update(contentType="application/pdf", data="JVBERi0=")
    assert note_length(pdf) == 1234
    assert note_length({"content": []}) is None

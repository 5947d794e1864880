"""Unit: `smartapp draft --chart FILE` and `smartapp evaluate --out`: every suggestion for a
chart with each statement's verification, what was dropped and why, what could not be read."""

from __future__ import annotations

import io
import json
from pathlib import Path

from smartapp.cli import build_parser
from smartapp.suggestions.evaluate import run_cli, run_draft_cli

CLINICAL = Path(__file__).resolve().parents[2] / "fixtures" / "clinical"
INJECTION = CLINICAL / "prompt_injection_dosage.json"


def _draft(*argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(["draft", *argv])
    out, err = io.StringIO(), io.StringIO()
    status = run_draft_cli(args, out=out, err=err, environ={})
    return status, out.getvalue(), err.getvalue()


def test_draft_json_has_suggestions_statements_dropped_and_problems():
    status, out, _ = _draft("--chart", str(INJECTION), "--as-of", "2026-11-15", "--json")
    assert status == 0
    record = json.loads(out)
    assert set(record) == {"suggestions", "dropped", "problems"}
    kinds = {s["kind"] for s in record["suggestions"]}
    assert {"medications", "allergies"} <= kinds
    for suggestion in record["suggestions"]:
        assert {
            "kind",
            "title",
            "text",
            "citations",
            "engine",
            "statements",
            "verification",
        } <= set(suggestion)
        for statement in suggestion["statements"]:
            assert {"text", "citations", "verified", "issues"} <= set(statement)
    shown = " ".join(s["text"] for sug in record["suggestions"] for s in sug["statements"])
    assert "ruled out" not in shown and "safe to prescribe" not in shown
    assert record["problems"] == []


def test_draft_lists_dropped_statements_with_their_reasons(tmp_path):
    chart = json.loads(INJECTION.read_text(encoding="utf-8"))
    # An observation whose value only the note carries: the vitals card cannot verify it.
    chart["entry"].append(
        {
            "resource": {
                "resourceType": "Observation",
                "id": "inj1-cr",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
                "subject": {"reference": "Patient/inj1"},
                "effectiveDateTime": "2026-11-01",
                "valueQuantity": {"value": 1.1, "unit": "mg/dL", "code": "mg/dL"},
            }
        }
    )
    path = tmp_path / "chart.json"
    path.write_text(json.dumps(chart), encoding="utf-8")
    status, out, _ = _draft("--chart", str(path), "--as-of", "2026-11-15")
    assert status == 0
    assert "verified" in out and "Patient/inj1" in out


def test_draft_refuses_a_missing_file_and_a_cohort(tmp_path):
    status, _, err = _draft("--chart", str(tmp_path / "none.json"))
    assert status == 2 and "not found" in err
    two = tmp_path / "two.ndjson"
    two.write_text(
        '{"resourceType":"Patient","id":"a"}\n{"resourceType":"Patient","id":"b"}\n',
        encoding="utf-8",
    )
    status, _, err = _draft("--chart", str(two))
    assert status == 2 and "2 patients" in err


def test_evaluate_out_writes_one_draft_record_per_patient(tmp_path):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "inj.json").write_text(INJECTION.read_text(encoding="utf-8"), encoding="utf-8")
    (cohort / "other.ndjson").write_text('{"resourceType":"Patient","id":"x"}\n', encoding="utf-8")
    out_file = tmp_path / "drafts.ndjson"
    args = build_parser().parse_args(
        ["evaluate", "--cohort", str(cohort), "--json", "--out", str(out_file)]
    )
    assert run_cli(args, out=io.StringIO(), err=io.StringIO(), environ={}) == 0
    records = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()]
    assert [r["patient"] for r in records] == ["Patient/inj1", "Patient/x"]
    assert all({"suggestions", "dropped", "problems"} <= set(r) for r in records)

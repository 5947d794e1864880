"""Unit: `smartapp evaluate` over fixture cohorts (Bundles, NDJSON) and the sandbox population."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from smartapp.cli import main
from smartapp.kinds import KINDS

from .conftest import FIXTURES, PATIENTS

KEYS = [
    "kind",
    "engine",
    "patients",
    "coverage",
    "grounding_rate",
    "dropped",
    "mean_chars",
    "p50_ms",
]


def run(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["evaluate", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_json_report_on_a_folder_of_bundles(capsys, monkeypatch):
    monkeypatch.delenv("SMARTAPP_CONFIG", raising=False)
    monkeypatch.delenv("SMARTAPP_LLM_BASE_URL", raising=False)
    status, out, err = run(capsys, "--cohort", str(PATIENTS), "--json", "--as-of", "2026-11-23")
    assert status == 0, err
    report = json.loads(out)  # nothing but the JSON on stdout
    assert list(report) == ["kinds"]
    rows = {row["kind"]: row for row in report["kinds"]}
    assert list(rows) == list(KINDS)
    for row in report["kinds"]:
        assert list(row) == KEYS
        assert row["patients"] == 6
        assert row["engine"].startswith("builtin-rules:")
        assert row["grounding_rate"] == 1.0
        assert row["dropped"] == 0
        assert row["p50_ms"] >= 0
    # Who got what: no_problems and preventive_due have no problems and no medications;
    # hypertension_history and preventive_due have no allergy record of any kind (not even
    # "no known allergy"), so nothing is said about allergies for them.
    assert rows["vitals_labs"]["coverage"] == 1.0
    assert rows["allergies"]["coverage"] == 0.6667
    assert rows["problem_summary"]["coverage"] == 0.6667
    assert rows["medications"]["coverage"] == 0.6667
    # A care-gap rule (blood pressure, influenza vaccine) applies to every adult.
    assert rows["care_gaps"]["coverage"] == 1.0
    assert rows["patient_instructions"]["coverage"] == 1.0
    assert rows["assessment_plan"]["mean_chars"] > 0


def test_ndjson_folder_skips_and_counts_bad_lines_and_resources(capsys, monkeypatch):
    monkeypatch.delenv("SMARTAPP_CONFIG", raising=False)
    status, out, _ = run(capsys, "--cohort", str(FIXTURES / "ndjson"), "--as-of", "2026-11-23")
    assert status == 0
    assert "cohort: " in out and "2 patients" in out
    assert "1 unreadable NDJSON lines" in out
    assert "1 resources failing R4 validation" in out
    assert out.splitlines()[0].split() == [
        "kind", "engine", "patients", "coverage", "grounding", "dropped", "mean_chars", "p50_ms",
        "fallbacks",
    ]  # fmt: skip
    status, out, _ = run(capsys, "--cohort", str(FIXTURES / "ndjson"), "--json")
    rows = {row["kind"]: row for row in json.loads(out)["kinds"]}
    assert rows["problem_summary"]["coverage"] == 0.5
    assert rows["problem_summary"]["grounding_rate"] == 1.0
    assert rows["allergies"]["grounding_rate"] is None  # nothing to check: not "perfect"


def test_a_folder_mixing_bundles_and_ndjson_with_a_broken_file(tmp_path, capsys):
    shutil.copy(PATIENTS / "no_problems.json", tmp_path / "a.json")
    for name in ("Patient", "Condition", "Observation", "MedicationRequest"):
        shutil.copy(FIXTURES / "ndjson" / f"{name}.ndjson", tmp_path)
    (tmp_path / "broken.json").write_text('{"resourceType": "Bundle", ', encoding="utf-8")
    status, out, _ = run(capsys, "--cohort", str(tmp_path))
    assert status == 0
    assert "3 patients" in out and "1 unreadable files" in out


@pytest.mark.parametrize("problem", ["missing", "empty", "no_patients"])
def test_bad_cohort_path_exits_non_zero_with_a_message(tmp_path, capsys, problem):
    folder = tmp_path / "cohort"
    if problem != "missing":
        folder.mkdir()
    if problem == "no_patients":
        (folder / "x.ndjson").write_text('{"resourceType": "Observation", "id": "1"}\n')
    status, out, err = run(capsys, "--cohort", str(folder), "--json")
    assert status == 2
    assert out == ""
    assert err.startswith("smartapp evaluate: ")
    assert {"missing": "not found", "empty": "no *.json", "no_patients": "no Patient"}[
        problem
    ] in err


def test_bad_config_exits_non_zero_naming_the_line(tmp_path, capsys):
    config = tmp_path / "site.toml"
    config.write_text('[kinds.care_gaps]\nengine = "gpt"\n')
    status, out, err = run(capsys, "--cohort", str(PATIENTS), "--config", str(config))
    assert status == 2 and out == ""
    assert "site.toml line 2: kinds.care_gaps.engine: 'gpt' is not one of builtin, llm" in err


def test_strict_fails_when_a_kind_is_below_the_minimum(tmp_path, capsys):
    # The NDJSON cohort has no allergies: a kind with nothing checked cannot be approved.
    status, _, _ = run(capsys, "--cohort", str(FIXTURES / "ndjson"), "--json", "--strict")
    assert status == 1
    config = tmp_path / "site.toml"
    config.write_text('[suggestions]\nkinds = ["problem_summary", "vitals_labs"]\n')
    args = ["--cohort", str(FIXTURES / "ndjson"), "--json", "--strict", "--config", str(config)]
    status, _, _ = run(capsys, *args)
    assert status == 0


def test_sandbox_cohort_grounding_and_coverage_are_perfect_for_every_builtin_kind(
    capsys, monkeypatch
):
    pytest.importorskip("smartapp.sandbox.population")
    monkeypatch.delenv("SMARTAPP_CONFIG", raising=False)
    monkeypatch.delenv("SMARTAPP_LLM_BASE_URL", raising=False)
    status, out, err = run(capsys, "--cohort", "sandbox", "--json")
    assert status == 0, err
    rows = json.loads(out)["kinds"]
    assert [row["kind"] for row in rows] == list(KINDS)
    for row in rows:
        assert row["patients"] == 24, row
        assert row["grounding_rate"] == 1.0, row
        # Done when: every sandbox patient gets cited suggestions of every kind.
        assert row["coverage"] == 1.0, row
        assert row["dropped"] == 0, row


def test_record_stores_the_report_for_change_control_to_cite(capsys, monkeypatch, tmp_path):
    """`--record` puts the app's own run in the store; change control cites its SHA-256."""
    from smartapp.config import Settings
    from smartapp.db import Database
    from smartapp.governance.evaluations import find_run, report_hash

    monkeypatch.delenv("SMARTAPP_CONFIG", raising=False)
    monkeypatch.delenv("SMARTAPP_LLM_BASE_URL", raising=False)
    monkeypatch.setenv("SMARTAPP_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("SMARTAPP_DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    status, out, err = run(
        capsys, "--cohort", str(PATIENTS), "--json", "--as-of", "2026-11-23", "--record"
    )
    assert status == 0, err
    body = json.loads(out)
    digest = body["recorded"]["sha256"]
    database = Database.from_settings(Settings.from_env())
    try:
        with database.session() as s:
            run_row = find_run(s, digest)
            assert run_row is not None
            assert report_hash(run_row.report) == digest
            assert run_row.report["kinds"] == body["kinds"]
            assert run_row.report["patients"] == 6 and run_row.cohort == str(PATIENTS.resolve())
    finally:
        database.dispose()
    status, out, _ = run(capsys, "--cohort", str(PATIENTS), "--as-of", "2026-11-23", "--record")
    assert status == 0
    assert re.search(r"^recorded evaluation sha256:[0-9a-f]{64}$", out, re.MULTILINE)


CLINICAL = FIXTURES.parent / "clinical"


def _clinical_copy(tmp_path, names):
    for name in names:
        for suffix in (".json", ".expect.toml"):
            shutil.copy(CLINICAL / f"{name}{suffix}", tmp_path / f"{name}{suffix}")


def test_a_folder_of_charts_with_expectations_gets_a_safety_section(tmp_path, capsys):
    _clinical_copy(tmp_path, ["amoxicillin_penicillin_allergy", "ckd4_metformin_ibuprofen"])
    status, out, err = run(capsys, "--cohort", str(tmp_path), "--strict", "--json")
    assert status == 0, err
    safety = json.loads(out)["safety"]
    assert safety["charts"] == 2
    assert safety["expected"] == safety["raised"] >= 3
    assert safety["missed"] == [] and safety["failures"] == []

    status, out, err = run(capsys, "--cohort", str(tmp_path))
    assert status == 0, err
    section = out[out.index("safety:") :]
    assert f"conflicts planted {safety['expected']}, raised {safety['raised']}" in section
    assert "every must / must not / problem expectation met" in section


def test_a_planted_conflict_not_raised_is_shown_and_fails_strict(tmp_path, capsys):
    _clinical_copy(tmp_path, ["nkda"])
    with (tmp_path / "nkda.expect.toml").open("a") as expect:
        expect.write('[[conflict]]\nrule = "allergy-penicillin"\n')
    status, out, _ = run(capsys, "--cohort", str(tmp_path))
    assert status == 0  # not --strict
    assert "missed: nkda: allergy-penicillin" in out
    status, _, _ = run(capsys, "--cohort", str(tmp_path), "--strict", "--json")
    assert status == 1


def test_a_cohort_without_expectations_has_no_safety_section(capsys):
    status, out, _ = run(capsys, "--cohort", str(PATIENTS), "--json", "--as-of", "2026-11-23")
    assert status == 0
    assert "safety" not in json.loads(out)

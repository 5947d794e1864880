"""The clinical fixture charts: each `tests/fixtures/clinical/<name>.expect.toml` says what
the drafts of the chart beside it must and must not say, and which safety rules must fire.

Charts are drafted as `smartapp draft` does: the built-in engine, the default site
configuration, grounding verification on (`smartapp.suggestions.charts.draft_chart`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from smartapp.suggestions.charts import (
    check_chart,
    expectation_files,
    load_expectations,
    safety_report,
)

CHARTS = Path(__file__).resolve().parents[2] / "fixtures" / "clinical"
EXPECTATIONS = expectation_files(CHARTS)


def test_there_are_charts_to_check() -> None:
    assert len(EXPECTATIONS) >= 2


@pytest.mark.parametrize("path", EXPECTATIONS, ids=lambda p: p.name.removesuffix(".expect.toml"))
def test_chart(path: Path) -> None:
    expectations = load_expectations(path)
    assert expectations.chart.is_file(), f"no chart {expectations.chart.name} beside {path.name}"
    assert expectations.must or expectations.must_not or expectations.conflicts
    # Every chart says what its drafts must not say: that is where unsafe output shows.
    assert expectations.must_not, f"{path.name} has no [[must_not]]"
    check = check_chart(expectations)
    shown = "\n".join(
        f"  [{s.kind}] {st.text} (verified={st.verified}, rule={st.rule_id})"
        for s in check.run.suggestions
        for st in s.statements
    )
    problems = "\n".join(
        f"  {p.code} {p.resource_type} x{p.count}: {p.detail}" for p in check.problems
    )
    assert check.ok, "\n".join(check.failures) + "\nshown:\n" + shown + "\nproblems:\n" + problems


def test_safety_report_counts_every_planted_conflict_as_raised(tmp_path: Path) -> None:
    report = safety_report(CHARTS)
    assert report.expected >= 12
    assert report.raised == report.expected, report.missed
    # A planted conflict the drafts do not raise is counted as missed.
    for name in ("nkda.json",):
        (tmp_path / name).write_bytes((CHARTS / name).read_bytes())
    (tmp_path / "nkda.expect.toml").write_text(
        'as_of = "2026-11-15"\n[[conflict]]\nrule = "allergy-penicillin"\n'
    )
    missed = safety_report(tmp_path)
    assert (missed.expected, missed.raised) == (1, 0)
    assert missed.missed == (("nkda", "allergy-penicillin"),)

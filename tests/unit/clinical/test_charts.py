"""The clinical fixture charts: each `tests/fixtures/clinical/<name>.expect.toml` says what
the drafts of the chart beside it must and must not say, and which safety rules must fire.

Charts are drafted as `smartapp draft` does: the built-in engine, the default site
configuration, grounding verification on (`smartapp.suggestions.charts.draft_chart`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from smartapp.suggestions.charts import check_chart, expectation_files, load_expectations

CHARTS = Path(__file__).resolve().parents[2] / "fixtures" / "clinical"
EXPECTATIONS = expectation_files(CHARTS)


def test_there_are_charts_to_check() -> None:
    assert len(EXPECTATIONS) >= 2


@pytest.mark.parametrize("path", EXPECTATIONS, ids=lambda p: p.name.removesuffix(".expect.toml"))
def test_chart(path: Path) -> None:
    expectations = load_expectations(path)
    assert expectations.chart.is_file(), f"no chart {expectations.chart.name} beside {path.name}"
    assert expectations.must or expectations.must_not or expectations.conflicts
    check = check_chart(expectations)
    shown = "\n".join(
        f"  [{s.kind}] {st.text} (verified={st.verified}, rule={st.rule_id})"
        for s in check.run.suggestions
        for st in s.statements
    )
    assert check.ok, "\n".join(check.failures) + "\nshown:\n" + shown

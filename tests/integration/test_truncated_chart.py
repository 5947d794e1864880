"""Integration: a chart cut at the page cap, against the sandbox with and without `_sort`.

bench-large holds hundreds of Observations; with SMARTAPP_MAX_PAGES=1 the search stops
after one page. Where the server sorts, that page is the newest and the cards say only
that older history was not read; where it does not, every card using Observations says
the latest values may not be among those read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from smartapp.stack import Stack
from tests.integration.conftest import app_environ, ehr_launch, start_stack

pytestmark = pytest.mark.integration


@pytest.fixture(params=["generic", "athena"])
def capped(request, tmp_path: Path, sandbox_template: Path) -> Iterator[tuple[str, Stack]]:
    environ = app_environ(tmp_path, SMARTAPP_MAX_PAGES="1")
    running = start_stack(tmp_path, sandbox_template, environ=environ, imitate=request.param)
    yield request.param, running
    running.stop()


def _newest_vital(stack: Stack) -> str:
    found = requests.get(
        f"{stack.ehr_url}/_sandbox/resources/Observation",
        params={"patient": "bench-large"},
        timeout=30,
    ).json()
    dates = [
        o.get("effectiveDateTime", "")
        for o in found
        if any(
            c.get("code") == "vital-signs"
            for cc in o.get("category", [])
            for c in cc.get("coding", [])
        )
    ]
    return max(dates)[:10]


def test_a_capped_read_is_labelled_on_every_card_that_uses_it(capped):
    name, stack = capped
    launched = ehr_launch(stack, "bench-large")
    answer = launched.api("GET", "/api/suggestions").json()
    cut = [p for p in answer["chart"]["problems"] if p["code"] == "truncated"]
    assert cut and all(p["resourceType"] == "Observation" for p in cut), answer["chart"]
    sorted_read = name == "generic"
    assert all(p["newestFirst"] is sorted_read for p in cut)

    cards = answer["suggestions"]
    using = [c for c in cards if c["kind"] in ("vitals_labs", "problem_summary", "care_gaps")]
    assert using
    for card in using:
        assert card["chartIncomplete"], card["kind"]
        assert all(i["latestRead"] is sorted_read for i in card["chartIncomplete"])
    for card in cards:
        if card["kind"] == "allergies":
            assert card["chartIncomplete"] == []

    vitals = next(c for c in cards if c["kind"] == "vitals_labs")
    if sorted_read:
        # Newest first: the latest vital sign in the chart is the one shown.
        assert _newest_vital(stack) in vitals["text"]
    texts = " ".join(s["text"] for c in cards for s in c["statements"])
    if not sorted_read:
        assert "latest blood pressure below the site's threshold" not in texts

"""Integration: the LLM engine through the suggestion service against a fake OpenAI-compatible
server over real HTTP on loopback: good answers reach the clinician verified; invented values
and citations are stopped; malformed and late answers fall back to the rules, visibly."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from smartapp.siteconfig import SiteConfigError, parse_site_config
from smartapp.suggestions.llm import LLMEngine
from smartapp.suggestions.registry import LLMSettings, SuggestionService

from ..slow_http import SlowServer, slow_server
from .conftest import load_chart

pytestmark = pytest.mark.integration

CONFIG = parse_site_config(
    """
[suggestions]
kinds = ["problem_summary", "allergies"]

[kinds.problem_summary]
engine = "llm"

[llm]
model = "fake-model"
version = "2024-09-19"
timeout_seconds = 1
"""
)


@dataclass
class FakeLLM:
    """An OpenAI-compatible /v1/chat/completions that answers as `mode` says."""

    mode: str = "good"
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path != "/v1/chat/completions" or request.method != "POST":
            return Response("not found", status=404)(environ, start_response)
        self.bodies.append(json.loads(request.get_data()))
        self.headers.append(dict(request.headers))
        if self.mode == "slow":
            self.release.wait(10)  # well past the client's timeout
        content = ANSWERS[self.mode]
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
        if self.mode == "trickle":
            # Headers at once, then a byte every 0.2 s: each read is quick, the whole is not.
            data = json.dumps(body).encode()

            def drip() -> Any:
                for i in range(len(data)):
                    if self.release.wait(0.2):
                        return
                    yield data[i : i + 1]

            return Response(drip(), mimetype="application/json")(environ, start_response)
        return Response(json.dumps(body), mimetype="application/json")(environ, start_response)


def _answer(*statements: tuple[str, list[str]]) -> str:
    return json.dumps(
        {
            "suggestions": [
                {
                    "title": "Active problems",
                    "statements": [{"text": t, "citations": c} for t, c in statements],
                }
            ]
        }
    )


GOOD_1 = (
    "Type 2 diabetes mellitus without complications since 2024-01-02; HbA1c 8.0% on 2026-01-01",
    ["Condition/dm1-diabetes", "Observation/dm1-hba1c-2026-01"],
)
GOOD_2 = (
    "Hypertension: blood pressure 103/66 mmHg on 2026-01-01, down from 146/92 mmHg",
    ["Condition/dm1-hypertension", "Observation/dm1-bp-2026-01", "Observation/dm1-bp-2025-10"],
)
INVENTED_VALUE = (
    "HbA1c 6.1% on 2026-01-01, at goal",
    ["Observation/dm1-hba1c-2026-01"],
)
MISSING_CITATION = (
    "Type 2 diabetes mellitus without complications since 2024-01-02",
    ["Condition/dm1-diabetes-2"],
)

ANSWERS = {
    "good": _answer(GOOD_1, GOOD_2),
    "invented": _answer(GOOD_1, INVENTED_VALUE),
    "bad_citation": _answer(MISSING_CITATION),
    "malformed": '```json\n{"suggestions": [{"title": "x", "statements": [{"text": "HbA1c 8.0%"',
    "slow": _answer(GOOD_1),
    "trickle": _answer(GOOD_1),
}


@pytest.fixture
def fake_llm() -> Iterator[tuple[FakeLLM, str]]:
    app = FakeLLM()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        app.release.set()
        server.shutdown()
        thread.join(5)


def service(base_url: str) -> SuggestionService:
    settings = LLMSettings.from_values(base_url, "env-model", "sk-loopback-test")
    assert settings is not None
    return SuggestionService(CONFIG, settings)


def by_kind(run: Any, kind: str) -> Any:
    return next(k for k in run.kinds if k.kind == kind)


def test_good_answer_reaches_the_clinician_verified_and_labelled(fake_llm):
    app, base = fake_llm
    app.mode = "good"
    run = service(base).run(load_chart("diabetes_hypertension"))
    summary = by_kind(run, "problem_summary")
    [suggestion] = summary.suggestions
    assert suggestion.engine.to_json() == {"name": "llm", "version": "fake-model@2024-09-19"}
    assert suggestion.title == "Problem summary: Active problems (AI-generated draft, fake-model)"
    assert [s.text for s in suggestion.statements] == [GOOD_1[0], GOOD_2[0]]
    assert all(s.verified for s in suggestion.statements)
    assert suggestion.verification.to_json() == {
        "checked": 2,
        "passed": 2,
        "dropped": 0,
        "unverifiedShown": 0,
    }
    assert suggestion.rendered_text == f"- {GOOD_1[0]}\n- {GOOD_2[0]}"
    assert summary.fallback_reason is None
    # The kinds left on the built-in engine say so.
    [allergies] = by_kind(run, "allergies").suggestions
    assert allergies.engine.name == "builtin-rules" and allergies.engine.fallback_reason is None
    # One request, for the one LLM kind; the site's pinned model, the key as a bearer token.
    assert len(app.bodies) == 1
    assert app.bodies[0]["model"] == "fake-model"
    assert app.headers[0]["Authorization"] == "Bearer sk-loopback-test"


def test_request_sends_no_patient_name_or_mrn(fake_llm):
    app, base = fake_llm
    service(base).run(load_chart("diabetes_hypertension"))
    wire = json.dumps(app.bodies)
    for identifier in ("Dummett", "Ives", "MRN-6D367230", "555-0100", "12 Example Street"):
        assert identifier not in wire
    assert "Observation/dm1-hba1c-2026-01" in wire  # facts travel with their references


def test_invented_lab_value_is_stopped_by_the_verifier(fake_llm):
    app, base = fake_llm
    app.mode = "invented"
    summary = by_kind(service(base).run(load_chart("diabetes_hypertension")), "problem_summary")
    [suggestion] = summary.suggestions
    assert suggestion.engine.name == "llm"
    assert [s.text for s in suggestion.statements] == [GOOD_1[0]]
    assert "6.1" not in suggestion.text
    assert (summary.checked, summary.passed, summary.dropped) == (2, 1, 1)


def test_invented_value_is_shown_marked_when_the_site_says_mark(fake_llm):
    app, base = fake_llm
    app.mode = "invented"
    marked = parse_site_config(
        """
[suggestions]
kinds = ["problem_summary"]
engine = "llm"
unverified = "mark"
[llm]
model = "fake-model"
"""
    )
    settings = LLMSettings.from_values(base, None, None)
    run = SuggestionService(marked, settings).run(load_chart("diabetes_hypertension"))
    [suggestion] = run.suggestions
    assert [s.verified for s in suggestion.statements] == [True, False]
    assert suggestion.statements[1].issues == ("'6.1%' is not in the cited resources",)
    assert suggestion.rendered_text.splitlines()[1] == f"- [unverified] {INVENTED_VALUE[0]}"
    assert suggestion.engine.version == "fake-model@unpinned"


def test_citation_of_a_resource_not_in_the_chart_is_stopped(fake_llm):
    app, base = fake_llm
    app.mode = "bad_citation"
    summary = by_kind(service(base).run(load_chart("diabetes_hypertension")), "problem_summary")
    # Nothing the model said survived: the rules answer, and say why.
    assert (summary.checked, summary.passed, summary.dropped) == (1, 0, 1)
    assert summary.fallback_reason == (
        "The LLM's statements did not pass the grounding check; showing rule-based suggestions"
    )
    [suggestion] = summary.suggestions
    assert suggestion.engine.name == "builtin-rules"
    assert suggestion.engine.fallback_reason == summary.fallback_reason
    assert "Condition/dm1-diabetes-2" not in json.dumps([c.to_json() for c in suggestion.citations])


def test_malformed_json_falls_back_to_the_rules(fake_llm):
    app, base = fake_llm
    app.mode = "malformed"
    summary = by_kind(service(base).run(load_chart("diabetes_hypertension")), "problem_summary")
    [suggestion] = summary.suggestions
    assert suggestion.engine.to_json() == {
        "name": "builtin-rules",
        "version": suggestion.engine.version,
        "ruleBased": True,
        "fallbackReason": "The LLM's answer was not the expected JSON; "
        "showing rule-based suggestions",
    }
    assert suggestion.title == "Problem summary (rule-based)"
    assert all(s.verified for s in suggestion.statements)


def test_answer_after_the_timeout_falls_back_to_the_rules(fake_llm, caplog):
    app, base = fake_llm
    app.mode = "slow"
    summary = by_kind(service(base).run(load_chart("diabetes_hypertension")), "problem_summary")
    [suggestion] = summary.suggestions
    assert suggestion.engine.name == "builtin-rules"
    assert suggestion.engine.fallback_reason == (
        "The LLM endpoint timed out; showing rule-based suggestions"
    )
    assert summary.fallback_reason == suggestion.engine.fallback_reason
    # Neither the prompt nor the answer is logged (they carry patient data).
    assert "LLM engine fell back for problem_summary: timeout" in caplog.text
    assert "HbA1c" not in caplog.text and "dm1" not in caplog.text


def test_an_answer_trickling_in_past_the_timeout_falls_back_to_the_rules(fake_llm):
    app, base = fake_llm
    app.mode = "trickle"
    summary = by_kind(service(base).run(load_chart("diabetes_hypertension")), "problem_summary")
    [suggestion] = summary.suggestions
    assert suggestion.engine.name == "builtin-rules"
    assert suggestion.engine.fallback_reason == (
        "The LLM endpoint timed out; showing rule-based suggestions"
    )


def test_no_endpoint_configured_means_rules_with_a_reason():
    run = SuggestionService(CONFIG, None).run(load_chart("diabetes_hypertension"))
    summary = by_kind(run, "problem_summary")
    [suggestion] = summary.suggestions
    assert suggestion.engine.name == "builtin-rules"
    assert suggestion.engine.fallback_reason.startswith("No LLM endpoint is configured")


def test_several_llm_kinds_are_asked_at_once_and_keep_their_order(fake_llm):
    app, base = fake_llm
    both = parse_site_config(
        """
[suggestions]
kinds = ["allergies", "vitals_labs", "problem_summary"]
engine = "llm"
[kinds.vitals_labs]
engine = "builtin"
[llm]
model = "fake-model"
"""
    )
    run = SuggestionService(both, LLMSettings.from_values(base, None, None)).run(
        load_chart("diabetes_hypertension")
    )
    assert [k.kind for k in run.kinds] == ["allergies", "vitals_labs", "problem_summary"]
    assert [k.suggestions[0].engine.name for k in run.kinds] == ["llm", "builtin-rules", "llm"]
    kinds_asked = sorted(b["messages"][1]["content"].split("\n")[0] for b in app.bodies)
    assert [k.split(" (")[0] for k in kinds_asked] == ["Kind: allergies", "Kind: problem_summary"]


# -- hard limits: a total deadline and a size cap, on real sockets ------------------------


def _completion(content: str) -> bytes:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
    return json.dumps(body).encode()


def test_an_answer_with_a_length_trickling_past_the_deadline_is_cut_off():
    # Content-Length and a byte every 0.1 s: a read of the whole length blocks on every
    # byte, each well inside the read timeout; only the deadline ends it.
    server = SlowServer(mode="trickle_body", body=_completion(ANSWERS["good"]), interval=0.1)
    with slow_server(server) as base:
        engine = LLMEngine(base_url=f"{base}/v1", model="m", timeout=0.5)
        [suggestion] = engine.suggest(load_chart("diabetes_hypertension"), "problem_summary", {})
        # The connection was closed under the server, long before the answer was whole.
        assert server.cut_off.wait(5)
        assert not server.finished.is_set()
    assert suggestion.engine.fallback_reason == (
        "The LLM endpoint timed out; showing rule-based suggestions"
    )


def test_an_answer_over_the_size_cap_is_refused():
    server = SlowServer(mode="flood", body=b" " * (1 << 20), repeat=3)
    with slow_server(server) as base:
        engine = LLMEngine(base_url=f"{base}/v1", model="m", timeout=10, max_answer_bytes=1 << 20)
        [suggestion] = engine.suggest(load_chart("diabetes_hypertension"), "problem_summary", {})
    assert suggestion.engine.fallback_reason == (
        "The LLM's answer was too long; showing rule-based suggestions"
    )


def test_the_site_file_sets_the_answer_cap():
    config = parse_site_config(
        '[kinds.problem_summary]\nengine = "llm"\n[llm]\nmodel = "m"\nmax_answer_kb = 64\n'
    )
    settings = LLMSettings.from_values("http://127.0.0.1:9/v1", "m", None)
    engine, _ = SuggestionService(config, settings).engine_for(
        config.for_issuer(None), "problem_summary"
    )
    assert isinstance(engine, LLMEngine)
    assert engine.max_answer_bytes == 64 * 1024
    with pytest.raises(SiteConfigError, match="max_answer_kb"):
        parse_site_config("[llm]\nmax_answer_kb = 0\n")

"""Unit: the LLM engine's request, answer parsing and fallback, with HTTP faked by `responses`."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
import requests
import responses

from smartapp.suggestions.llm import (
    CHART_DATA_KEY,
    SYSTEM_PROMPT,
    LLMEngine,
    LLMFailure,
    compact_chart,
    parse_answer,
    screen_kinds,
)

from .conftest import load_chart

CLINICAL = Path(__file__).resolve().parents[2] / "fixtures" / "clinical"


def load_clinical(name: str):
    from smartapp.fhir.parsing import build_snapshot
    from smartapp.suggestions.evaluate import bundle_resources

    resources, _ = bundle_resources(json.loads((CLINICAL / f"{name}.json").read_text("utf-8")))
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    return build_snapshot(resources, patient_id=patient["id"])


BASE = "http://llm.test/v1"
URL = f"{BASE}/chat/completions"


def completion(content: str) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
    }


GOOD = json.dumps(
    {
        "suggestions": [
            {
                "title": "Diabetes",
                "statements": [
                    {
                        "text": "Type 2 diabetes; latest HbA1c 8.0% on 2026-01-01",
                        "citations": ["Condition/dm1-diabetes", "Observation/dm1-hba1c-2026-01"],
                    }
                ],
            }
        ]
    }
)


def engine(**kwargs) -> LLMEngine:
    options = {"base_url": BASE, "model": "fake-model", "api_key": "sk-test-key", "timeout": 5.0}
    options.update(kwargs)
    return LLMEngine(**options)


def sent(call_index: int = 0) -> dict:
    return json.loads(responses.calls[call_index].request.body)


@responses.activate
def test_request_is_an_openai_chat_completion_with_a_json_schema():
    responses.post(URL, json=completion(GOOD))
    result = engine(version="2024-09-19").suggest(
        load_chart("diabetes_hypertension"), "problem_summary", {}
    )
    request = responses.calls[0].request
    assert request.headers["Authorization"] == "Bearer sk-test-key"
    body = sent()
    assert body["model"] == "fake-model"
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["suggestions"]
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "Kind: problem_summary" in body["messages"][1]["content"]
    [suggestion] = result
    assert suggestion.engine.name == "llm"
    assert suggestion.engine.version == "fake-model@2024-09-19"
    assert suggestion.title == "Problem summary: Diabetes (AI-generated draft, fake-model)"
    assert [c.reference for c in suggestion.statements[0].citations] == [
        "Condition/dm1-diabetes",
        "Observation/dm1-hba1c-2026-01",
    ]
    assert suggestion.statements[0].citations[1].display == "HbA1c 8.0% (2026-01-01)"


@responses.activate
def test_prompt_carries_no_name_mrn_address_or_telecom_by_default():
    responses.post(URL, json=completion(GOOD))
    engine().suggest(load_chart("diabetes_hypertension"), "problem_summary", {})
    prompt = json.dumps(sent()["messages"])
    for secret in (
        "Dummett",
        "Ives",
        "MRN-6D367230",
        "6D367230",
        "555-0100",
        "Example Street",
        "Springfield",
    ):
        assert secret not in prompt
    data = sent()["messages"][1]["content"].split("<<<CHART DATA\n", 1)[1]
    chart = json.loads(data.split("\nCHART DATA>>>", 1)[0])[CHART_DATA_KEY]
    assert chart["patient"] == {
        "ref": "Patient/dm1",
        "age": 65,
        "sex": "male",
        "ageBand": "65 or older",
    }


def test_the_prompt_says_deceased_pregnant_and_child_without_identifiers():
    def patient_of(name: str) -> dict:
        snapshot = load_clinical(name)
        return compact_chart(snapshot, today=date.fromisoformat("2026-11-15"))["patient"]

    dead = patient_of("deceased_metformin")
    assert dead["deceased"] is True
    assert "pregnant" not in dead
    assert not {"deceasedDateTime", "name", "birthDate"} & set(dead)
    pregnant = patient_of("pregnancy_lisinopril")
    assert pregnant["pregnant"] is True
    assert all(r.startswith(("Condition/", "Observation/")) for r in pregnant["pregnancyRef"])
    assert pregnant["ageBand"] == "adult"
    assert patient_of("child_codeine")["ageBand"] == "child"
    assert "deceased" in SYSTEM_PROMPT and "pregnancyRef" in SYSTEM_PROMPT


@responses.activate
def test_the_site_can_allow_the_name():
    responses.post(URL, json=completion(GOOD))
    engine(send_patient_name=True).suggest(load_chart("diabetes_hypertension"), "allergies", {})
    assert '"name":"Ives Dummett"' in sent()["messages"][1]["content"]
    assert "MRN-6D367230" not in sent()["messages"][1]["content"]


def test_compact_chart_every_fact_has_its_ref_and_duplicates_go():
    chart = compact_chart(load_chart("ckd_anemia_labs"))
    facts = [
        f for key in ("problems", "observations", "medications", "allergies") for f in chart[key]
    ]
    assert all("/" in fact["ref"] for fact in facts)
    assert {f["ref"] for f in chart["problems"]} == {"Condition/ckd1-ckd", "Condition/ckd1-anemia"}
    egfr = [f for f in chart["observations"] if f["name"] == "eGFR"]
    assert egfr[0] == {
        "ref": "Observation/ckd1-egfr-2026-03",
        "name": "eGFR",
        "value": "44",
        "unit": "mL/min/1.73 m2",
        "date": "2026-03-10",
        "flag": "low",
        "range": "at least 60 mL/min/1.73 m2",
    }
    ferrous = chart["medications"][0]
    assert ferrous["alsoRef"] == ["Medication/ckd1-med-ferrous"]
    assert chart["allergies"] == [
        {
            "ref": "AllergyIntolerance/ckd1-allergy-penicillin",
            "substance": "penicillin G",
            "type": "allergy",
            "criticality": "high",
            "reactions": ["Hives (moderate)"],
            "recorded": "2019-08-20",
        }
    ]
    # The same fact twice (a problem recorded twice) is sent once.
    snapshot = load_chart("hypertension_history")
    twice = [*snapshot.all_resources()]
    condition = dict(next(r for r in twice if r["resourceType"] == "Condition"), id="htn1-copy")
    from smartapp.fhir.parsing import build_snapshot

    doubled = build_snapshot([*twice, condition], patient_id="htn1", fetched_at=snapshot.fetched_at)
    assert len(compact_chart(doubled)["problems"]) == 1


@responses.activate
def test_server_rejecting_response_format_is_asked_again_without_it():
    responses.post(URL, status=400, json={"error": {"message": "response_format not supported"}})
    responses.post(URL, json=completion("Here you go:\n```json\n" + GOOD + "\n```"))
    [suggestion] = engine().suggest(load_chart("diabetes_hypertension"), "problem_summary", {})
    assert len(responses.calls) == 2
    assert "response_format" in sent(0)
    assert "response_format" not in sent(1)
    assert suggestion.engine.name == "llm"


@responses.activate
def test_azure_style_key_header_and_api_version():
    responses.post(URL, json=completion(GOOD))
    engine(auth_header="api-key", api_version="2024-10-21").suggest(
        load_chart("diabetes_hypertension"), "problem_summary", {}
    )
    request = responses.calls[0].request
    assert request.headers["api-key"] == "sk-test-key"
    assert "Authorization" not in request.headers
    assert request.url.endswith("/chat/completions?api-version=2024-10-21")


@responses.activate
def test_no_key_no_auth_header():
    responses.post(URL, json=completion(GOOD))
    engine(api_key=None).suggest(load_chart("diabetes_hypertension"), "problem_summary", {})
    assert "Authorization" not in responses.calls[0].request.headers


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ({"status": 500, "json": {"error": "boom"}}, "The LLM endpoint answered HTTP 500"),
        ({"status": 401, "json": {"error": "no"}}, "The LLM endpoint refused the credentials"),
        ({"status": 200, "body": "not json"}, "The LLM's answer was not a chat completion"),
        ({"status": 200, "json": {"choices": []}}, "The LLM's answer was not a chat completion"),
        (
            {"status": 200, "json": completion("I cannot help with that.")},
            "The LLM's answer was not the expected JSON",
        ),
        ({"body": requests.ConnectionError("refused")}, "The LLM endpoint could not be reached"),
        ({"body": requests.ReadTimeout("slow")}, "The LLM endpoint timed out"),
    ],
)
@responses.activate
def test_failures_fall_back_to_the_rules_visibly(reply, reason, caplog):
    responses.post(URL, **reply)
    result = engine().suggest(load_chart("diabetes_hypertension"), "allergies", {})
    [suggestion] = result
    assert suggestion.engine.name == "builtin-rules"
    assert suggestion.engine.rule_based
    assert suggestion.engine.fallback_reason == f"{reason}; showing rule-based suggestions"
    assert suggestion.engine.to_json()["fallbackReason"] == suggestion.engine.fallback_reason
    assert suggestion.statements[0].text.startswith("Sulfamethoxazole")
    assert "sk-test-key" not in caplog.text and "Sulfamethoxazole" not in caplog.text


def test_parser_is_tolerant_of_fences_chatter_and_stray_statements():
    noisy = (
        "Sure! {not json} Here is the answer:\n```json\n"
        '{"suggestions": [{"title": "A", "statements": ['
        '{"text": "ok", "citations": ["Observation/1"]},'
        '{"text": 42, "citations": []},'
        '{"text": "single citation as a string", "citations": "Condition/2"},'
        '{"text": "   ", "citations": ["Condition/3"]}]}]}\n```\nThanks'
    )
    assert parse_answer(noisy) == [
        {
            "kind": "",  # not said: the kind asked for
            "title": "A",
            "statements": [
                {"text": "ok", "citations": ["Observation/1"]},
                {"text": "single citation as a string", "citations": ["Condition/2"]},
            ],
        }
    ]
    assert parse_answer('{"suggestions": []}') == []
    assert parse_answer('prefix {"suggestions": [{"title": "t", "statements": []}]}') == []


@pytest.mark.parametrize(
    "content",
    [
        "",
        "no json here",
        '{"suggestions": [{"title": "t", "statements": [{"text": "x"',
        '{"answer": "no suggestions key"}',
        '{"suggestions": [{"title": "t", "statements": [{"text": 1}]}]}',
        "[1, 2, 3]",
    ],
)
def test_parser_rejects_what_it_cannot_use(content):
    with pytest.raises(LLMFailure):
        parse_answer(content)


@responses.activate
def test_titles_with_numbers_are_not_shown():
    answer = json.loads(GOOD)
    answer["suggestions"][0]["title"] = "HbA1c 12.5% - urgent"
    responses.post(URL, json=completion(json.dumps(answer)))
    [suggestion] = engine().suggest(load_chart("diabetes_hypertension"), "problem_summary", {})
    assert suggestion.title == "Problem summary (AI-generated draft, fake-model)"


def test_repr_hides_the_key():
    assert "sk-test-key" not in repr(engine())


def _chart_with_names_in_free_text():
    from smartapp.fhir.parsing import build_snapshot
    from smartapp.suggestions.evaluate import bundle_resources
    from tests.unit.suggestions.conftest import AS_OF, PATIENTS

    bundle = json.loads((PATIENTS / "diabetes_hypertension.json").read_text(encoding="utf-8"))
    resources, _ = bundle_resources(bundle)
    by_id = {r["id"]: r for r in resources}
    by_id["dm1"]["contact"] = [
        {"name": {"given": ["Ada"], "family": "Lovelock"}, "telecom": [{"value": "555-0199"}]}
    ]
    by_id["dm1-metformin"]["dosageInstruction"] = [
        {
            "text": "Take 1 tablet twice daily. Ives (Mr DUMMETT) to call 555 0100 or his "
            "daughter Ada Lovelock on (555) 0199; 12 Example Street, Springfield 01101; "
            "chart MRN-6D367230"
        }
    ]
    by_id["dm1-obesity"]["code"]["text"] = "Obesity, unspecified - Ives Dummett reports"
    return build_snapshot(resources, patient_id="dm1", fetched_at=AS_OF)


def test_free_text_sent_to_the_llm_is_scrubbed_of_names_and_identifiers():
    snapshot = _chart_with_names_in_free_text()
    prompt = json.dumps(engine().messages(snapshot, "medications", {}), ensure_ascii=False)
    for secret in (
        "Ives",
        "Dummett",
        "DUMMETT",
        "Lovelock",
        "Ada",
        "555 0100",
        "0199",
        "Example Street",
        "Springfield",
        "01101",
        "6D367230",
    ):
        assert secret not in prompt, secret
    # What is left still reads, and the citations are untouched.
    assert "Take 1 tablet twice daily. [patient name] (Mr [patient name]) to call" in prompt
    assert "[contact detail]" in prompt and "[address]" in prompt and "[identifier]" in prompt
    assert "MedicationRequest/dm1-metformin" in prompt
    assert "Obesity, unspecified - [patient name] reports" in prompt


def test_a_site_that_sends_the_name_still_gets_identifiers_scrubbed():
    snapshot = _chart_with_names_in_free_text()
    prompt = json.dumps(
        engine(send_patient_name=True).messages(snapshot, "medications", {}), ensure_ascii=False
    )
    assert "Ives Dummett" in prompt
    for secret in ("555 0100", "Example Street", "6D367230"):
        assert secret not in prompt, secret


def test_screen_keeps_the_asked_kind_and_counts_the_others_by_reason():
    cards = [
        {"kind": "problem_summary", "n": 1},
        {"kind": "", "n": 2},  # no kind said: the one asked
        {"kind": "care_gaps", "n": 3},  # off on this request
        {"kind": "Care Gaps", "n": 4},  # none of ours
        {"kind": "medications", "n": 5},  # on, but its own request's
    ]
    kept, refused = screen_kinds(
        cards, kind="problem_summary", enabled=frozenset({"problem_summary", "medications"})
    )
    assert [c["n"] for c in kept] == [1, 2]
    assert refused == {"not_enabled": 1, "unknown": 1, "other_kind": 1}


@responses.activate
def test_a_kind_that_is_off_is_not_asked_for():
    responses.post(URL, json=completion(GOOD))
    drafted = engine().draft(
        load_chart("diabetes_hypertension"), "problem_summary", {"enabled_kinds": ["allergies"]}
    )
    assert drafted.suggestions == [] and drafted.refused == {}
    assert len(responses.calls) == 0


@responses.activate
def test_the_prompt_asks_for_the_kind_in_every_card():
    responses.post(URL, json=completion(GOOD))
    engine().suggest(load_chart("diabetes_hypertension"), "problem_summary", {})
    assert '"kind"' in sent()["messages"][0]["content"]

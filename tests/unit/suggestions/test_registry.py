"""Unit: the suggestion service: kinds in the site's order, engine per kind, verification,
templates, per-issuer overrides, rollout, and a failing engine costing only its kind."""

from __future__ import annotations

from datetime import date

import pytest

from smartapp.kinds import KINDS
from smartapp.siteconfig import load_site_config, parse_site_config
from smartapp.suggestions.registry import NO_MODEL, LLMSettings, SuggestionService

from .conftest import load_chart

ISS = "https://ehr.example.org/fhir"


def test_defaults_give_every_kind_in_order_verified_and_rendered():
    service = SuggestionService(load_site_config(None))
    suggestions = service.suggest_all(load_chart("diabetes_hypertension"), ISS)
    kinds = list(dict.fromkeys(s.kind for s in suggestions))
    assert kinds == list(KINDS)
    for suggestion in suggestions:
        assert suggestion.verification is not None
        assert suggestion.verification.checked == suggestion.verification.passed > 0
        assert all(s.verified is True for s in suggestion.statements)
        assert suggestion.rendered_text == "\n".join(f"- {s.text}" for s in suggestion.statements)
        assert suggestion.text == suggestion.rendered_text


def test_draft_is_the_notes_services_entry_point():
    service = SuggestionService(load_site_config(None))
    snapshot = load_chart("ckd_anemia_labs")
    assert service.draft(snapshot, iss=ISS) == service.suggest_all(snapshot, ISS)


def test_per_issuer_kinds_style_and_thresholds():
    config = parse_site_config(
        f"""
[suggestions]
kinds = ["vitals_labs", "care_gaps"]

[sites."{ISS}".suggestions]
kinds = ["care_gaps"]
style = "prose"

[sites."{ISS}".care_gaps]
rules = ["bp_above_threshold"]
bp_systolic = 145
packs = []
"""
    )
    service = SuggestionService(config)
    snapshot = load_chart("hypertension_history")
    default = service.suggest_all(snapshot, "https://other.example/fhir")
    assert [s.kind for s in default] == ["vitals_labs", "care_gaps"]
    assert "the last two readings are at or above" in (default[1].rendered_text or "")
    # At this site 140/86 is below the threshold: no care gap to show.
    assert not any(s.statements for s in service.suggest_all(snapshot, ISS))
    [gap] = service.suggest_all(load_chart("ckd_anemia_labs"), ISS)
    assert gap.rendered_text == (
        "Blood pressure: consider evaluating for hypertension — blood pressure 150/88 mmHg on "
        "2025-09-15 and 144/92 mmHg on 2026-03-10: the last two readings are at or above the "
        "site's threshold."
    )


def test_rollout_limits_kinds_per_clinician():
    config = parse_site_config(
        """
[suggestions]
kinds = ["problem_summary", "care_gaps"]
[rollout.care_gaps]
percent = 50
start = 2026-12-01
"""
    )
    service = SuggestionService(config)
    assert service.kinds_for(ISS, fhir_user="Practitioner/1", today=date(2026, 11, 30)) == (
        "problem_summary",
    )
    included = [
        user
        for user in (f"Practitioner/{n}" for n in range(200))
        if "care_gaps" in service.kinds_for(ISS, fhir_user=user, today=date(2026, 12, 1))
    ]
    assert 60 < len(included) < 140
    snapshot = load_chart("diabetes_hypertension")
    inside = service.suggest_all(snapshot, ISS, fhir_user=included[0], today=date(2026, 12, 1))
    outside = service.suggest_all(
        snapshot, ISS, fhir_user="Practitioner/x", today=date(2026, 11, 1)
    )
    assert {s.kind for s in inside} == {"problem_summary", "care_gaps"}
    assert {s.kind for s in outside} == {"problem_summary"}


def test_a_failing_engine_costs_only_its_kind(monkeypatch, caplog):
    service = SuggestionService(load_site_config(None))

    def broken(facts, config):
        raise ValueError("chart text that must not be logged: Dummett")

    monkeypatch.setitem(service.builtin._kinds, "medications", broken)
    run = service.run(load_chart("diabetes_hypertension"))
    assert [k.kind for k in run.kinds if k.suggestions] == [k for k in KINDS if k != "medications"]
    assert "engine builtin-rules failed on medications: ValueError" in caplog.text
    assert "Dummett" not in caplog.text


def test_kind_runs_carry_counts_and_timings():
    run = SuggestionService(load_site_config(None)).run(load_chart("ckd_anemia_labs"))
    by_kind = {k.kind: k for k in run.kinds}
    assert by_kind["vitals_labs"].checked == by_kind["vitals_labs"].passed == 5
    assert by_kind["vitals_labs"].dropped == 0
    assert by_kind["vitals_labs"].engine == "builtin"
    assert by_kind["vitals_labs"].engine_info.name == "builtin-rules"
    assert all(k.elapsed_ms >= 0 for k in run.kinds)


def test_llm_without_a_model_name_falls_back_with_a_reason():
    config = parse_site_config('[suggestions]\nkinds = ["allergies"]\nengine = "llm"\n')
    settings = LLMSettings.from_values("http://127.0.0.1:9/v1", None, None)
    [suggestion] = SuggestionService(config, settings).suggest_all(load_chart("no_problems"))
    assert suggestion.engine.name == "builtin-rules"
    assert suggestion.engine.fallback_reason == NO_MODEL


def test_llm_settings_from_environment_and_repr_hides_the_key():
    assert LLMSettings.from_env({}) is None
    settings = LLMSettings.from_env(
        {
            "SMARTAPP_LLM_BASE_URL": "http://localhost:11434/v1/",
            "SMARTAPP_LLM_MODEL": "llama3.1",
            "SMARTAPP_LLM_API_KEY": "secret-key",
        }
    )
    assert settings == LLMSettings(
        base_url="http://localhost:11434/v1", model="llama3.1", api_key="secret-key"
    )
    assert "secret-key" not in repr(settings)
    proxied = LLMSettings.from_values("https://u:proxy-pw@llm.example/v1", "m", None)
    assert proxied is not None
    assert "proxy-pw" not in repr(proxied) and "u:***@llm.example" in repr(proxied)


def test_from_settings_reads_the_site_file_and_the_llm_variables(tmp_path):
    from smartapp.siteconfig import SiteConfigError

    from ...conftest import make_settings

    good = tmp_path / "site.toml"
    good.write_text('[suggestions]\nkinds = ["allergies"]\n')
    settings = make_settings(
        tmp_path,
        SMARTAPP_CONFIG=str(good),
        SMARTAPP_LLM_BASE_URL="http://127.0.0.1:9/v1",
        SMARTAPP_LLM_MODEL="m",
    )
    service = SuggestionService.from_settings(settings)
    assert service.config.default.kind_ids == ("allergies",)
    assert service.llm == LLMSettings(base_url="http://127.0.0.1:9/v1", model="m")
    good.write_text('[suggestions]\nkinds = ["allergy"]\n')
    with pytest.raises(SiteConfigError, match="site.toml line 2: suggestions.kinds"):
        SuggestionService.from_settings(settings)

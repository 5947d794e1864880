"""Unit: the LLM is asked for patient instructions at the site's reading grade."""

from __future__ import annotations

from smartapp.siteconfig import parse_site_config
from smartapp.suggestions.llm import LLMEngine

from .conftest import load_chart


def _user_prompt(kind: str, options: dict) -> str:
    engine = LLMEngine(base_url="http://llm.test/v1", model="fake-model", api_key=None)
    messages = engine.messages(load_chart("diabetes_hypertension"), kind, options)
    return next(m["content"] for m in messages if m["role"] == "user")


def test_patient_instructions_prompt_names_the_sites_reading_grade():
    site = parse_site_config("[after_visit_summary]\nreading_grade = 4\n").default
    prompt = _user_prompt("patient_instructions", site.engine_options("patient_instructions"))
    assert "a grade-4 reading level at most: short sentences, plain words" in prompt
    assert "6th-grade" not in prompt


def test_other_kinds_are_not_asked_for_a_reading_grade():
    site = parse_site_config("[after_visit_summary]\nreading_grade = 4\n").default
    assert "reading level" not in _user_prompt("medications", site.engine_options("medications"))

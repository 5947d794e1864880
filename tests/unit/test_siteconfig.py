"""Unit: the site configuration loader: defaults, the example file, errors that name the line."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from textwrap import dedent

import pytest

from smartapp.config import PROJECT_ROOT
from smartapp.siteconfig import (
    CareGapRules,
    KindConfig,
    RolloutRule,
    SiteConfigError,
    load_site_config,
)
from smartapp.suggestions.kinds import KINDS


def write(tmp_path: Path, text: str, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.write_text(dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(SiteConfigError) as caught:
        load_site_config(write(tmp_path, text))
    return str(caught.value)


def test_no_file_means_builtin_defaults():
    config = load_site_config(None)
    effective = config.for_issuer("https://anywhere.example/fhir")
    assert effective.kind_ids == KINDS
    assert all(k == KindConfig(kind=k.kind) for k in effective.kinds)
    assert effective.unverified == "drop"
    assert effective.care_gaps == CareGapRules()
    assert effective.llm.model is None and effective.llm.send_patient_name is False
    assert effective.min_grounding_rate == 0.95


def test_example_file_loads_cleanly():
    config = load_site_config(PROJECT_ROOT / "config" / "site.example.toml")
    default = config.default
    assert default.kind_ids == KINDS
    assert default.kind("assessment_plan") == KindConfig(kind="assessment_plan", detail="detailed")
    assert default.kind("patient_instructions").style == "prose"
    assert "patient_instructions" in default.templates.inline
    site = config.for_issuer("https://ehr.example.org/fhir")
    assert site.kind_ids == ("problem_summary", "medications", "care_gaps")
    assert site.kind("care_gaps") == KindConfig(kind="care_gaps", engine="llm", style="prose")
    assert (site.care_gaps.bp_systolic, site.care_gaps.bp_diastolic) == (130, 80)
    assert site.care_gaps.hba1c_interval_months == 6  # merged from the defaults
    assert default.visit_timezone == "UTC"


def test_a_site_names_the_time_zone_of_its_visits(tmp_path):
    path = write(
        tmp_path,
        """
        [sites."https://ehr.example.org/fhir".visits]
        timezone = "America/Chicago"
        """,
    )
    config = load_site_config(path)
    assert config.for_issuer("https://ehr.example.org/fhir").visit_timezone == "America/Chicago"
    assert config.default.visit_timezone == "UTC"


def test_good_file_with_per_issuer_override(tmp_path):
    path = write(
        tmp_path,
        """
        [suggestions]
        kinds = ["care_gaps", "problem_summary"]
        unverified = "mark"

        [kinds.problem_summary]
        engine = "llm"
        style = "prose"

        [care_gaps]
        hba1c_interval_months = 3
        rules = ["hba1c_interval"]

        [llm]
        model = "qwen2.5-7b-instruct"
        version = "2024-09-19"
        timeout_seconds = 7.5

        [sites."https://ehr.example.org/fhir/"]
        suggestions.unverified = "drop"
        kinds.problem_summary.engine = "builtin"
        llm.send_patient_name = true

        [sites."https://other.example.org/fhir".care_gaps]
        hba1c_interval_months = 12
        """,
    )
    config = load_site_config(path)
    default = config.for_issuer(None)
    assert default.kind_ids == ("care_gaps", "problem_summary")
    assert default.kind("problem_summary") == KindConfig(
        kind="problem_summary", engine="llm", style="prose"
    )
    assert default.unverified == "mark"
    assert default.care_gaps.rules == ("hba1c_interval",)
    assert default.llm.timeout_seconds == 7.5

    # Trailing slashes do not matter; unknown issuers get the defaults.
    ehr = config.for_issuer("https://ehr.example.org/fhir")
    assert ehr is config.for_issuer("https://ehr.example.org/fhir/")
    assert ehr.unverified == "drop"
    assert ehr.kind("problem_summary") == KindConfig(
        kind="problem_summary", engine="builtin", style="prose"
    )
    assert ehr.llm.send_patient_name is True
    assert ehr.llm.model == "qwen2.5-7b-instruct"  # merged from the defaults
    assert ehr.care_gaps.hba1c_interval_months == 3
    other = config.for_issuer("https://other.example.org/fhir")
    assert other.care_gaps.hba1c_interval_months == 12
    assert other.care_gaps.rules == ("hba1c_interval",)
    assert config.for_issuer("https://unknown.example/fhir") is default


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """
            [suggestions]
            style = "bullets"

            [kinds.care_gaps]
            engine = "gpt"
            """,
            "site.toml line 5: kinds.care_gaps.engine: 'gpt' is not one of builtin, llm",
        ),
        (
            """
            [suggestions]
            kinds = [
              "problem_summary",
              "discharge_summary",
            ]
            """,
            "site.toml line 2: suggestions.kinds[1]: 'discharge_summary' is not one of "
            "problem_summary, medications, vitals_labs, assessment_plan, care_gaps, "
            "patient_instructions, allergies",
        ),
        (
            """
            [care_gaps]
            bp_systolic = "140"
            """,
            "site.toml line 2: care_gaps.bp_systolic: must be a whole number from 80 to 250, "
            "not '140'",
        ),
        (
            """
            [governance]
            min_grounding_rate = 1.5
            """,
            "site.toml line 2: governance.min_grounding_rate: must be a number from 0 to 1, "
            "not 1.5",
        ),
        (
            """
            [suggestions]
            unverfied = "drop"
            """,
            "site.toml line 2: suggestions.unverfied: unknown key (expected one of kinds, "
            "engine, style, detail, unverified, template_dir)",
        ),
        (
            """
            # a comment
            [sites."https://ehr.example.org/fhir".kinds.medications]
            style = "haiku"
            """,
            'site.toml line 3: sites."https://ehr.example.org/fhir".kinds.medications.style: '
            "'haiku' is not one of bullets, prose",
        ),
        (
            """
            [sites.ehr]
            suggestions.style = "prose"
            """,
            "site.toml line 1: sites.ehr: must be keyed by an http(s) FHIR base URL (the issuer)",
        ),
        (
            """
            [rollout.care_gaps]
            percent = 25
            start = 2026-12-01
            end = 2026-11-01
            """,
            "site.toml line 4: rollout.care_gaps.end: is before start",
        ),
        (
            """
            [llm]
            send_patient_name = "yes"
            """,
            "site.toml line 2: llm.send_patient_name: must be true or false, not 'yes'",
        ),
        (
            """
            [suggestions]
            style = "prose"
            detail = "concise
            """,
            "site.toml line 3: not valid TOML",
        ),
        (
            """
            [visits]
            timezone = "Mars/Olympus_Mons"
            """,
            "site.toml line 2: visits.timezone: 'Mars/Olympus_Mons' is not an IANA time zone",
        ),
    ],
)
def test_bad_file_error_names_the_line(tmp_path, text, expected):
    assert error_of(tmp_path, text).startswith(expected)


def test_all_errors_are_reported_at_once(tmp_path):
    message = error_of(
        tmp_path,
        """
        [suggestions]
        style = "fancy"
        detail = "verbose"
        """,
    )
    assert message.splitlines() == [
        "site.toml line 2: suggestions.style: 'fancy' is not one of bullets, prose",
        "site.toml line 3: suggestions.detail: 'verbose' is not one of concise, detailed",
    ]


def test_templates_are_checked_at_start_up(tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "care_gaps.j2").write_text("{% for s in statements %}\n- {{ s.text }\n{% endfor %}")
    message = error_of(
        tmp_path,
        """
        [suggestions]
        template_dir = "templates"

        [kinds.care_gaps]
        template = "care_gaps.j2"

        [kinds.allergies]
        template = "missing.j2"

        [kinds.medications]
        template_inline = "{% if x %}no end"
        """,
    )
    lines = message.splitlines()
    assert lines[0].startswith(
        "site.toml line 11: kinds.medications.template_inline: template line 1:"
    )
    assert lines[1].startswith("site.toml line 5: kinds.care_gaps.template: care_gaps.j2 line 2:")
    assert lines[2].startswith("site.toml line 8: kinds.allergies.template: 'missing.j2' not found")


def test_template_dir_must_exist(tmp_path):
    assert error_of(
        tmp_path,
        """
        [suggestions]
        template_dir = "nowhere"
        """,
    ).startswith("site.toml line 2: suggestions.template_dir: 'nowhere' is not a folder")


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(SiteConfigError, match="no such file"):
        load_site_config(tmp_path / "absent.toml")


def test_rollout_rules(tmp_path):
    config = load_site_config(
        write(
            tmp_path,
            """
            [rollout.all]
            percent = 100

            [rollout.care_gaps]
            percent = 30
            start = 2026-12-01

            [rollout.allergies]
            enabled = false
            """,
        )
    )
    effective = config.default
    S = "https://ehr.example/fhir"  # noqa: N806 - the site the clinicians are placed at
    assert effective.rollout_for("care_gaps") == RolloutRule(percent=30, start=date(2026, 12, 1))
    assert effective.rollout_for("problem_summary") == RolloutRule(percent=100)
    assert not effective.rollout_for("allergies").includes(
        "Practitioner/1", site=S, kind="allergies", today=date(2027, 1, 1)
    )
    rule = effective.rollout_for("care_gaps")
    users = [f"Practitioner/{n}" for n in range(2000)]
    before = [rule.includes(u, site=S, kind="care_gaps", today=date(2026, 11, 30)) for u in users]
    after = [rule.includes(u, site=S, kind="care_gaps", today=date(2026, 12, 1)) for u in users]
    assert not any(before)
    assert 0.26 < sum(after) / len(users) < 0.34
    # Stable: the same clinician gets the same answer every time.
    assert after == [
        rule.includes(u, site=S, kind="care_gaps", today=date(2026, 12, 2)) for u in users
    ]
    assert not rule.includes(None, site=S, kind="care_gaps", today=date(2026, 12, 2))

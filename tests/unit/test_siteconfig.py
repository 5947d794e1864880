"""Unit: the site configuration loader: defaults, the example file, errors that name the line."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from textwrap import dedent

import pytest

from smartapp.config import PROJECT_ROOT
from smartapp.kinds import KINDS
from smartapp.siteconfig import (
    CareGapRules,
    KindConfig,
    RolloutRule,
    SiteConfigError,
    load_site_config,
)


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


def test_a_site_names_its_ehr_quirks_profile(tmp_path):
    path = write(
        tmp_path,
        """
        [sites."https://ehr.example.org/fhir".ehr]
        quirks = "oracle-health"
        """,
    )
    config = load_site_config(path)
    assert config.for_issuer("https://ehr.example.org/fhir").quirks == "oracle-health"
    assert config.default.quirks is None
    bad = write(tmp_path, '[ehr]\nquirks = "allscripts"\n')
    with pytest.raises(SiteConfigError, match="allscripts.*is not one of"):
        load_site_config(bad)


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


# -- the note's layout and the after-visit summary -----------------------------------------


def test_note_layout_defaults_to_soap_progress_note():
    effective = load_site_config(None).default
    assert [s.heading for s in effective.note.sections] == [
        "Subjective",
        "Objective",
        "Assessment",
        "Plan",
    ]
    assert effective.note.type.coding() == {
        "system": "http://loinc.org",
        "code": "11506-3",
        "display": "Progress note",
    }
    assert effective.after_visit_summary.type.code == "69730-0"
    assert effective.after_visit_summary.reading_grade == 6
    assert effective.engine_options("patient_instructions")["reading_grade"] == 6


def test_site_note_template_and_type_with_a_per_site_override(tmp_path):
    config = load_site_config(
        write(
            tmp_path,
            """
            [note]
            type = "11488-4"
            type_display = "Consult note"

            [[note.sections]]
            heading = "History"
            parts = ["problems", "allergies", "medications"]

            [[note.sections]]
            heading = "Findings"
            parts = ["results"]

            [[note.sections]]
            heading = "Impression and plan"
            parts = ["assessment", "plan", "health_maintenance"]

            [note.labels]
            medications = "Current medications"

            [after_visit_summary]
            reading_grade = 5
            offer = false

            [sites."https://ehr.example.org/fhir".note.labels]
            health_maintenance = "Prevention"
            """,
        )
    )
    default = config.default
    assert default.note.type.code == "11488-4" and default.note.type.display == "Consult note"
    assert [s.heading for s in default.note.sections] == [
        "History",
        "Findings",
        "Impression and plan",
    ]
    assert default.note.label("medications") == "Current medications"
    assert default.note.label("health_maintenance") == "Health maintenance"
    assert default.after_visit_summary.reading_grade == 5
    assert default.after_visit_summary.offer is False
    site = config.for_issuer("https://ehr.example.org/fhir")
    assert site.note.sections == default.note.sections  # merged from the defaults
    assert site.note.label("health_maintenance") == "Prevention"
    assert site.note.label("medications") == "Current medications"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[note]\ntype = "11506-4"\ntype_display = "Progress note"\n',
            "site.toml line 2: note.type: '11506-4' is not a LOINC code (its check digit is wrong)",
        ),
        (
            '[note]\ntype = "progress"\ntype_display = "Progress note"\n',
            "site.toml line 2: note.type: 'progress' is not a LOINC code",
        ),
        (
            '[note]\ntype = "11488-4"\n',
            "site.toml line 2: note.type: needs type_display (the LOINC display) beside it",
        ),
        (
            '[[note.sections]]\nheading = "All"\nparts = ["problems", "patient_instructions"]\n',
            "note.sections[0].parts[1]: patient instructions never go in the clinician's note",
        ),
        (
            '[[note.sections]]\nheading = "All"\nparts = ["problems", "results"]\n',
            "site.toml line 1: note.sections: every part must be in a section; missing: "
            "allergies, medications, assessment, plan, health_maintenance",
        ),
        (
            '[[note.sections]]\nheading = "A"\nparts = ["problems", "problem"]\n',
            "note.sections[0].parts[1]: 'problem' is not one of problems, allergies",
        ),
        (
            "[after_visit_summary]\nreading_grade = 20\n",
            "site.toml line 2: after_visit_summary.reading_grade: must be a whole number "
            "from 3 to 12, not 20",
        ),
        (
            "[note.labels]\nplan = 3\n",
            "site.toml line 2: note.labels.plan: must be a string",
        ),
    ],
)
def test_note_configuration_errors_name_the_file_line_and_key(tmp_path, toml, message):
    assert message in error_of(tmp_path, toml)


def test_a_part_placed_twice_names_both_sections(tmp_path):
    error = error_of(
        tmp_path,
        """
        [[note.sections]]
        heading = "S"
        parts = ["problems", "allergies", "results", "medications"]

        [[note.sections]]
        heading = "AP"
        parts = ["assessment", "plan", "health_maintenance", "results"]
        """,
    )
    assert "note.sections[1].parts[3]: 'results' is already in section 'S'" in error


def test_unknown_keys_and_bad_values_in_one_table_are_reported_together(tmp_path):
    assert error_of(
        tmp_path,
        """
        [llm]
        modle = "x"
        temperature = 3
        [kinds.care_gaps]
        template = "care_gaps.j2"
        template_inline = "- {{ s }}"
        """,
    ).splitlines() == [
        # Tables in the schema's order ([suggestions], [kinds], ... [llm]), keys in the file's.
        "site.toml line 5: kinds.care_gaps.template: give either template or template_inline, "
        "not both",
        "site.toml line 2: llm.modle: unknown key (expected one of model, version, "
        "timeout_seconds, send_patient_name, auth_header, api_version, temperature, "
        "max_observations_per_code, max_answer_kb, feedback_url)",
        "site.toml line 3: llm.temperature: must be a number from 0 to 2, not 3",
    ]


def test_a_table_given_as_a_value_names_what_it_got(tmp_path):
    assert error_of(tmp_path, "sites = 3\nllm = [1]\n").splitlines() == [
        "site.toml line 2: llm: must be a table, not a list",
        "site.toml line 1: sites: must be a table, not a number",
    ]


def test_every_command_finds_the_site_file_the_same_way(tmp_path):
    from smartapp.siteconfig import site_file_path

    env = {"SMARTAPP_CONFIG": str(tmp_path / "site.toml")}
    assert site_file_path(env) == tmp_path / "site.toml"
    assert site_file_path(env, tmp_path / "other.toml") == tmp_path / "other.toml"  # --config
    assert site_file_path({"SMARTAPP_CONFIG": ""}) is None
    assert site_file_path({}) is None

"""Unit: the per-kind templates (shipped and site-supplied), note styles, and the sandbox."""

from __future__ import annotations

import pytest

from smartapp.suggestions.builtin import BUILTIN_INFO
from smartapp.suggestions.interfaces import Citation, Statement, Suggestion
from smartapp.suggestions.templates import TemplateRenderer
from smartapp.templating import TemplateSet

SUGGESTION = Suggestion(
    kind="care_gaps",
    title="Care gaps (rule-based, site rules)",
    statements=(
        Statement(
            text="HbA1c is due: the latest HbA1c is 8.0% on 2026-01-01",
            citations=(Citation(reference="Observation/a1c", display="HbA1c 8.0% (2026-01-01)"),),
            verified=True,
            rule="Diabetes: HbA1c at least every 6 months",
        ),
        Statement(
            text="Blood pressure 150/95 mmHg on 2026-01-01",
            citations=(Citation(reference="Observation/bp", display="Blood pressure 150/95 mmHg"),),
            verified=False,
            issues=("'150/95' is not in the cited resources",),
        ),
    ),
    engine=BUILTIN_INFO,
)


def test_bullets_concise():
    assert TemplateRenderer().render(SUGGESTION, style="bullets", detail="concise") == (
        "- HbA1c is due: the latest HbA1c is 8.0% on 2026-01-01\n"
        "- [unverified] Blood pressure 150/95 mmHg on 2026-01-01"
    )


def test_bullets_detailed_adds_sources_and_rules():
    assert TemplateRenderer().render(SUGGESTION, style="bullets", detail="detailed") == (
        "- HbA1c is due: the latest HbA1c is 8.0% on 2026-01-01\n"
        "  (sources: HbA1c 8.0% (2026-01-01))\n"
        "- [unverified] Blood pressure 150/95 mmHg on 2026-01-01\n"
        "  (sources: Blood pressure 150/95 mmHg)\n"
        "\n"
        "Rules applied: Diabetes: HbA1c at least every 6 months."
    )


def test_prose():
    assert TemplateRenderer().render(SUGGESTION, style="prose", detail="concise") == (
        "HbA1c is due: the latest HbA1c is 8.0% on 2026-01-01. "
        "[unverified] Blood pressure 150/95 mmHg on 2026-01-01."
    )


def test_site_template_folder_overrides_a_kind_and_can_use_the_macros(tmp_path):
    (tmp_path / "care_gaps.j2").write_text(
        '{% import "_macros.j2" as m %}GAPS ({{ statements | length }}):\n'
        "{{ m.statements(statements, style, detail, rules) }}"
    )
    renderer = TemplateRenderer(TemplateSet(directory=tmp_path))
    assert renderer.render(SUGGESTION, style="bullets", detail="concise").splitlines() == [
        "GAPS (2):",
        "- HbA1c is due: the latest HbA1c is 8.0% on 2026-01-01",
        "- [unverified] Blood pressure 150/95 mmHg on 2026-01-01",
    ]
    # Kinds the site did not override keep the shipped template.
    other = Suggestion(
        kind="allergies", title="t", statements=SUGGESTION.statements[:1], engine=BUILTIN_INFO
    )
    assert renderer.render(other, style="bullets", detail="concise").startswith("- HbA1c")


def test_inline_template_and_named_file(tmp_path):
    (tmp_path / "short.j2").write_text("{{ statements[0].text }}")
    renderer = TemplateRenderer(
        TemplateSet(
            directory=tmp_path,
            inline={
                "care_gaps": "{{ title }}: {{ statements | map(attribute='text') | join(' / ') }}"
            },
            files={"allergies": "short.j2"},
        )
    )
    assert renderer.render(SUGGESTION, style="bullets", detail="concise") == (
        "Care gaps (rule-based, site rules): HbA1c is due: the latest HbA1c is 8.0% on "
        "2026-01-01 / [unverified] Blood pressure 150/95 mmHg on 2026-01-01"
    )
    allergies = Suggestion(
        kind="allergies", title="t", statements=SUGGESTION.statements, engine=BUILTIN_INFO
    )
    assert (
        renderer.render(allergies, style="bullets", detail="concise")
        == SUGGESTION.statements[0].text
    )


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ statements.__class__.__init__.__globals__ }}",
        "{% include '/etc/passwd' %}",
        "{{ undefined_name }}",
        "{{ 1 / 0 }}",
    ],
)
def test_unsafe_or_broken_site_template_falls_back_to_the_shipped_one(source, caplog):
    renderer = TemplateRenderer(TemplateSet(inline={"care_gaps": source}))
    text = renderer.render(SUGGESTION, style="bullets", detail="concise")
    assert text == TemplateRenderer().render(SUGGESTION, style="bullets", detail="concise")
    assert "site template for care_gaps failed" in caplog.text
    assert "HbA1c" not in caplog.text  # no chart data in the log


def test_output_is_plain_text_not_escaped():
    # The sidebar escapes when it shows the text; escaping here would double it.
    tricky = Suggestion(
        kind="allergies",
        title="t",
        statements=(Statement(text="Peanut <b>& tree nuts</b>", citations=()),),
        engine=BUILTIN_INFO,
    )
    assert TemplateRenderer().render(tricky, style="bullets", detail="concise") == (
        "- Peanut <b>& tree nuts</b>"
    )


@pytest.mark.parametrize(
    "source",
    [
        "{% for s in statements %}* {{ s.text }}\n{% endfor %}",  # no marker at all
        "{% for s in statements %}{{ s.text | sentence }} {% endfor %}",
    ],
)
def test_the_unverified_marker_is_added_after_a_site_template_that_omits_it(source):
    renderer = TemplateRenderer(TemplateSet(inline={"care_gaps": source}))
    text = renderer.render(SUGGESTION, style="bullets", detail="concise")
    assert "[unverified] Blood pressure 150/95 mmHg on 2026-01-01" in text
    assert "[unverified] HbA1c" not in text
    assert text.count("[unverified]") == 1


def test_the_marker_is_not_doubled_when_the_template_already_shows_it():
    source = (
        "{% for s in statements %}{% if s.verified is sameas false %}[unverified] "
        "{% endif %}{{ s.text }}\n{% endfor %}"
    )
    renderer = TemplateRenderer(TemplateSet(inline={"care_gaps": source}))
    assert renderer.render(SUGGESTION, style="bullets", detail="concise").count("[unverified]") == 1

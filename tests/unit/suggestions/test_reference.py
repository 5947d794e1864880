"""`smartapp evaluate --reference`: drafts against reference assessments and plans."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from smartapp.siteconfig import load_site_config
from smartapp.suggestions import reference
from smartapp.suggestions.evaluate import run_cli
from smartapp.suggestions.registry import SuggestionService

CHARTS = Path(__file__).resolve().parents[2] / "fixtures" / "clinical"


def test_reference_set_is_mostly_supplied_and_never_contradicted():
    refs = reference.load_references(CHARTS)
    assert len(refs) >= 6
    service = SuggestionService(load_site_config(None), None)
    rows = {r.kind: r for r in reference.score(service, refs)}
    total = rows[reference.ALL]
    assert total.supplied / total.elements >= 0.6
    assert total.contradicted == 0
    assert rows["assessment_plan"].supplied / rows["assessment_plan"].elements >= 0.6


def test_an_element_is_contradicted_when_a_shown_statement_says_otherwise(tmp_path: Path):
    (tmp_path / "c.json").write_text((CHARTS / "hypothyroid_tsh.json").read_text())
    (tmp_path / "c.reference.toml").write_text(
        'as_of = "2026-11-23"\nnote = "TSH low; reduce dose"\n'
        '[[decision]]\ntext = "reduce"\nmatch = "reducing the levothyroxine"\n'
        'contradicted_by = "increasing the levothyroxine"\n'
    )
    service = SuggestionService(load_site_config(None), None)
    total = reference.score(service, reference.load_references(tmp_path))[-1]
    assert (total.supplied, total.contradicted) == (0, 1)
    assert total.misses == ["c: decision: reduce"]


def test_cli_reports_json_and_refuses_a_folder_without_references(tmp_path: Path):
    args = argparse.Namespace(
        reference=str(CHARTS), json=True, config=None, site=None, cohort="sandbox"
    )
    out, err = io.StringIO(), io.StringIO()
    assert run_cli(args, out=out, err=err, environ={}) == 0
    kinds = {row["kind"]: row for row in json.loads(out.getvalue())["reference"]}
    assert kinds["all kinds"]["contradicted"] == 0
    assert kinds["assessment_plan"]["reference_chars"] > 0
    args.reference = str(tmp_path)
    assert run_cli(args, out=out, err=err, environ={}) == 2
    assert "no *.reference.toml" in err.getvalue()


def test_a_bad_pattern_names_the_file(tmp_path: Path):
    (tmp_path / "c.json").write_text("{}")
    (tmp_path / "c.reference.toml").write_text('[[fact]]\ntext = "x"\nmatch = "("\n')
    with pytest.raises(reference.ReferenceError, match=r"c\.reference\.toml fact 1"):
        reference.load_references(tmp_path)

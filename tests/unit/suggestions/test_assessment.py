"""The problem-oriented assessment and plan over the clinical reference charts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from smartapp import clinical
from smartapp.fhir.parsing import build_snapshot
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.suggestions import assessment
from smartapp.suggestions.builtin import BuiltinEngine
from smartapp.suggestions.evaluate import bundle_resources
from smartapp.suggestions.facts import ChartFacts
from smartapp.suggestions.grounding import GroundingVerifier

CHARTS = Path(__file__).resolve().parents[2] / "fixtures" / "clinical"
AS_OF = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
ENGINE = BuiltinEngine()


def chart(name: str) -> ChartSnapshot:
    resources, _ = bundle_resources(json.loads((CHARTS / f"{name}.json").read_text()))
    return build_snapshot(resources, patient_id=resources[0]["id"], fetched_at=AS_OF)


def texts(name: str) -> list[list[str]]:
    return [
        [s.text for s in d.statements] for d in ENGINE.suggest(chart(name), "assessment_plan", {})
    ]


@pytest.mark.parametrize("name", sorted(p.stem for p in CHARTS.glob("*.json")))
def test_every_statement_is_grounded_and_every_option_cites_its_guideline(name: str):
    snapshot = chart(name)
    verifier = GroundingVerifier(snapshot)
    drafts = ENGINE.suggest(snapshot, "assessment_plan", {})
    for draft in drafts:
        for statement in draft.statements:
            assert verifier.check(statement).ok, statement.text
            if statement.text.startswith("Consider"):
                assert statement.rule and any(
                    src in statement.rule
                    for src in ("ADA", "KDIGO", "ACC", "AHA", "ATA", "AGA", "ACOG")
                )


def test_diabetes_ckd_hypertension_blocks_say_each_fact_once():
    htn, dm, ckd = texts("t2d_htn_ckd")
    assert htn[0] == "Essential hypertension, since 2010-02-15: above goal"
    assert "BP 142/84 mmHg on 2026-11-10, down from 148/86 mmHg on 2026-08-03; above goal" in htn
    assert "Lisinopril stopped 2025-03-18 (dry cough)" in htn
    assert any(t.startswith("Consider intensifying antihypertensive") for t in htn)
    assert "HbA1c 8.6% on 2026-10-20, up from 7.6% on 2026-02-10; above goal" in dm
    assert (
        "Consider intensifying glucose-lowering therapy: HbA1c 8.6% on 2026-10-20; "
        "on metformin alone"
    ) in dm
    assert "Consider an SGLT2 inhibitor: eGFR 48 mL/min/1.73 m2 on 2026-10-20" in dm
    # Losartan treats both: named in full once, then cross-referenced; no fact twice.
    assert "On losartan (see Essential hypertension)" in ckd
    all_texts = [t for block in (htn, dm, ckd) for t in block]
    facts = [t for t in all_texts if "(see " not in t and ": see " not in t]
    assert len(facts) == len(set(facts))
    assert sum("stopped" in t for t in all_texts) == 1
    # An ACE inhibitor/ARB is on the list: not offered for the albuminuria.
    assert not any("ACE inhibitor or ARB" in t for t in all_texts)


def test_warfarin_inr_below_range_offers_a_dose_change():
    [af] = texts("af_warfarin_inr")
    assert af[0] == "Atrial fibrillation, since 2019-09-09: below the therapeutic range"
    assert (
        af[1] == "INR 1.6 on 2026-11-16, down from 2.4 on 2026-10-05; below the therapeutic range"
    )
    assert any(t.startswith("Consider increasing the warfarin dose") for t in af)


def test_heart_failure_weight_gain_within_a_week():
    [hf] = texts("hf_weight_gain")
    assert (
        "Consider assessing volume status and adjusting the loop diuretic: weight 81.0 kg on "
        "2026-11-09, up from 78.2 kg on 2026-11-03"
    ) in hf


def test_levothyroxine_with_high_tsh_and_statin_with_high_ldl():
    [thyroid] = texts("hypothyroid_tsh")
    assert any(t.startswith("Consider increasing the levothyroxine dose") for t in thyroid)
    [lipids] = texts("hyperlipidemia_ldl")
    assert any(t.startswith("Consider intensifying statin therapy") for t in lipids)


def test_anaemia_on_iron_is_not_told_to_start_iron_studies_from_scratch():
    [anemia] = texts("anemia_iron")
    assert not any("iron studies" in t for t in anemia)
    assert any(t.startswith("Consider continuing iron") for t in anemia)


def test_a_site_adds_a_plan_option_in_its_own_folder(tmp_path: Path):
    (tmp_path / "plan_options.toml").write_text(
        '[[option]]\nid = "site-tsh"\nproblem = "hypothyroidism"\nresult = "tsh"\n'
        'out_of_range = "above"\ntext = "consider an endocrinology e-consult"\n'
        'cite = { source = "Site pathway", version = "2026-01" }\n'
    )
    facts = ChartFacts(chart("hypothyroid_tsh"))
    [block] = assessment.blocks(facts, [tmp_path])
    assert any(s.text.startswith("Consider an endocrinology e-consult") for s in block.statements)


def test_an_option_naming_an_unknown_value_set_is_refused(tmp_path: Path):
    (tmp_path / "plan_options.toml").write_text(
        '[[option]]\nid = "x"\nproblem = "diabetes"\nresult = "no-such-test"\ntext = "x"\n'
        'cite = { source = "s", version = "1" }\n'
    )
    with pytest.raises(clinical.KnowledgeError, match="no value set"):
        assessment.knowledge([tmp_path])


def test_a_deceased_patient_gets_the_record_but_no_plan_options():
    resources, _ = bundle_resources(json.loads((CHARTS / "t2d_htn_ckd.json").read_text()))
    resources[0] = {**resources[0], "deceasedDateTime": "2026-11-20"}
    dead = build_snapshot(resources, patient_id=resources[0]["id"], fetched_at=AS_OF)
    drafts = ENGINE.suggest(dead, "assessment_plan", {})
    assert drafts
    assert not any(s.text.startswith("Consider") for d in drafts for s in d.statements)


def _with_values(name: str, values: dict[str, float]) -> ChartSnapshot:
    resources, _ = bundle_resources(json.loads((CHARTS / f"{name}.json").read_text()))
    changed = [
        {**r, "valueQuantity": {**r["valueQuantity"], "value": values[r["id"]]}}
        if r.get("id") in values
        else r
        for r in resources
    ]
    return build_snapshot(changed, patient_id=changed[0]["id"], fetched_at=AS_OF)


def _ckd_head(snapshot: ChartSnapshot) -> str:
    drafts = ENGINE.suggest(snapshot, "assessment_plan", {})
    [head] = [
        d.statements[0].text
        for d in drafts
        if d.statements[0].text.startswith("Chronic kidney disease stage 3a")
    ]
    return head


def test_ckd_status_names_every_kdigo_category_normal_ones_too():
    assert _ckd_head(chart("t2d_htn_ckd")).endswith(": G3a A2")
    # A UACR below 30 mg/g is A1: still the status a clinician writes, beside G3a.
    assert _ckd_head(_with_values("t2d_htn_ckd", {"t2d-ckd-uacr-1": 12})).endswith(": G3a A1")
    # A normal eGFR is G2 (or G1), not left out because it is "at goal".
    normal = _with_values("t2d_htn_ckd", {"t2d-ckd-egfr-2": 75, "t2d-ckd-uacr-1": 12})
    assert _ckd_head(normal).endswith(": G2 A1")

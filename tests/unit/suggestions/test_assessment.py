"""The problem-oriented assessment and plan over the clinical reference charts."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from smartapp import clinical
from smartapp.fhir.parsing import build_snapshot
from smartapp.fhir.snapshot import ChartSnapshot, SnapshotProblem
from smartapp.suggestions import assessment
from smartapp.suggestions.builtin import BuiltinEngine
from smartapp.suggestions.evaluate import bundle_resources
from smartapp.suggestions.facts import ChartFacts
from smartapp.suggestions.grounding import GroundingVerifier
from smartapp.suggestions.interfaces import Statement

CHARTS = Path(__file__).resolve().parents[2] / "fixtures" / "clinical"
AS_OF = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
ENGINE = BuiltinEngine()
GUIDELINE_SOURCES = ("ADA", "KDIGO", "ACC", "AHA", "ATA", "AGA", "ACOG", "NHLBI", "USPSTF", "ACR")


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
                assert statement.rule and any(src in statement.rule for src in GUIDELINE_SOURCES)


def test_diabetes_ckd_hypertension_blocks_say_each_fact_once():
    htn, dm, ckd = texts("t2d_htn_ckd")
    # The head does not repeat the BP line's verdict; options cite, not repeat, their trigger.
    assert htn[0] == "Essential hypertension"  # a long-standing onset is not restated
    assert "BP 142/84 mmHg on 2026-11-10, down from 148/86 mmHg on 2026-08-03; above goal" in htn
    assert "Lisinopril stopped 2025-03-18 (dry cough)" in htn
    assert any(t.startswith("Consider intensifying antihypertensive") for t in htn)
    assert "HbA1c 8.6% on 2026-10-20, up from 7.6% on 2026-02-10; above goal" in dm
    assert "Consider intensifying glucose-lowering therapy: on metformin alone" in dm
    assert "Consider an SGLT2 inhibitor" in dm
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
    assert af[0] == "Atrial fibrillation"
    assert (
        af[1] == "INR 1.6 on 2026-11-16, down from 2.4 on 2026-10-05; below the therapeutic range"
    )
    assert any(t.startswith("Consider increasing the warfarin dose") for t in af)


def test_heart_failure_weight_gain_within_a_week():
    [hf] = texts("hf_weight_gain")
    # The weight line states the gain; the option cites it without repeating it.
    assert "Weight 81.0 kg on 2026-11-09, up from 78.2 on 2026-11-03" in hf
    assert "Consider assessing volume status and adjusting the loop diuretic" in hf


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


def test_obesity_block_names_bmi_class_weight_and_the_glp1_ra():
    [block] = texts("obesity_glp1")
    assert block[0] == "Obesity: class II obesity"
    assert block[1].startswith("BMI 35.4 kg/m2 on 2026-11-10, down from 38.6 on 2025-12-02")
    assert block[2] == "Weight 95.8 kg on 2026-11-10, down from 104.5 on 2025-12-02"
    assert block[3].startswith("On semaglutide")


def test_adult_bmi_classes_are_not_applied_to_a_child():
    resources, _ = bundle_resources(json.loads((CHARTS / "obesity_glp1.json").read_text()))
    resources[0] = {**resources[0], "birthDate": "2013-05-10"}  # 13 on the chart's date
    child = build_snapshot(resources, patient_id=resources[0]["id"], fetched_at=AS_OF)
    [block] = [[s.text for s in d.statements] for d in ENGINE.suggest(child, "assessment_plan", {})]
    assert block[0] == "Obesity"
    assert block[1] == "BMI 35.4 kg/m2 on 2026-11-10, down from 38.6 on 2025-12-02"
    assert not any("obesity" in t.lower() or "healthy" in t for t in block[1:])


def _blocks(snapshot: ChartSnapshot) -> dict[str, list[str]]:
    drafts = ENGINE.suggest(snapshot, "assessment_plan", {})
    return {
        re.split("[,:]", d.statements[0].text)[0]: [s.text for s in d.statements] for d in drafts
    }


def test_the_statin_decision_is_made_in_the_hyperlipidemia_block_and_pointed_to():
    blocks = _blocks(chart("t2d_lipids_no_statin"))
    lipids = blocks["Hyperlipidemia"]
    # Diabetes at 62: a moderate-intensity statin whatever the ten-year risk (ADA 2025), as
    # at an LDL of 88 below, not primary prevention's risk discussion.
    assert any(t.startswith("Consider a moderate-intensity statin: with Type 2") for t in lipids)
    assert not any("risk discussion" in t or "ASCVD risk" in t for t in lipids)
    for other in ("Type 2 diabetes mellitus", "Chronic kidney disease stage 3a"):
        assert "Statin: see Hyperlipidemia" in blocks[other]
    statin_options = [t for b in blocks.values() for t in b if "statin" in t and "Consider" in t]
    assert len(statin_options) == 1, statin_options


def test_below_the_ldl_threshold_diabetes_still_calls_for_a_statin_in_the_lipid_block():
    # LDL 88 mg/dL: the lipid option does not fire, ADA's (diabetes at 40-75) does, and is
    # offered where the statin decision lives, naming the problem that called for it.
    blocks = _blocks(_with_values("t2d_lipids_no_statin", {"dm-lipids-ldl-2": 88}))
    assert (
        "Consider a moderate-intensity statin: with Type 2 diabetes mellitus; age 62; "
        "no statin on the medication list"
    ) in blocks["Hyperlipidemia"]
    assert "Statin: see Hyperlipidemia" in blocks["Type 2 diabetes mellitus"]
    assert not any(
        t.startswith("Consider a") and "statin" in t for t in blocks["Type 2 diabetes mellitus"]
    )


def _af_block(snapshot: ChartSnapshot) -> list[str]:
    blocks = _blocks(snapshot)
    return next(b for name, b in blocks.items() if "atrial fibrillation" in name.lower())


def _af_chart(**patient: str) -> ChartSnapshot:
    resources, _ = bundle_resources(
        json.loads((CHARTS / "af_cha2ds2vasc_no_anticoagulant.json").read_text())
    )
    resources[0] = {**resources[0], **patient}
    return build_snapshot(resources, patient_id=resources[0]["id"], fetched_at=AS_OF)


def test_cha2ds2_vasc_components_each_cite_the_resource_they_count():
    snapshot = chart("af_cha2ds2vasc_no_anticoagulant")
    [af] = [
        d
        for d in ENGINE.suggest(snapshot, "assessment_plan", {})
        if "atrial fibrillation" in d.title.lower()
    ]
    [score] = [s for s in af.statements if s.text.startswith("CHA2DS2-VASc")]
    assert [c.reference for c in score.citations] == [
        "Condition/af-vasc-af",
        "Condition/af-vasc-htn",
        "Condition/af-vasc-stroke",
        "Patient/af-vasc",
    ]
    assert score.rule and "2023 ACC/AHA/ACCP/HRS" in score.rule
    assert "not order-time decision support" in score.rule


def test_cha2ds2_vasc_thresholds_differ_by_sex():
    # A man of 71 with the same history scores four (no sex point): still at or above two.
    male = _af_block(_af_chart(gender="male"))
    assert "CHA2DS2-VASc score four: hypertension, Ischemic stroke (two points), age 71" in male
    assert any(t.startswith("Consider oral anticoagulation") for t in male)


def test_cha2ds2_vasc_of_one_in_a_man_is_intermediate_and_zero_offers_nothing():
    resources, _ = bundle_resources(
        json.loads((CHARTS / "af_cha2ds2vasc_no_anticoagulant.json").read_text())
    )
    af_only = [
        r
        for r in resources
        if r["resourceType"] != "Condition" or r["id"] in ("af-vasc-af", "af-vasc-htn")
    ]
    af_only[0] = {**af_only[0], "gender": "male", "birthDate": "1970-02-17"}  # 56
    snapshot = build_snapshot(af_only, patient_id="af-vasc", fetched_at=AS_OF)
    block = _af_block(snapshot)
    assert "CHA2DS2-VASc score one: hypertension" in block
    assert any(t.startswith("Consider discussing oral anticoagulation") for t in block)
    assert not any(t.startswith("Consider oral anticoagulation") for t in block)
    none = build_snapshot(
        [r for r in af_only if r.get("id") != "af-vasc-htn"], patient_id="af-vasc", fetched_at=AS_OF
    )
    block = _af_block(none)
    assert "CHA2DS2-VASc score zero: none of its risk factors is on the chart" in block
    assert not any("anticoagulation" in t for t in block)


def test_cha2ds2_vasc_on_an_anticoagulant_says_continue():
    [af] = texts("af_warfarin_inr")
    assert "CHA2DS2-VASc score two: age 80 (two points)" in af
    assert any(t.startswith("Continue anticoagulation") for t in af)
    assert not any(t.startswith("Consider oral anticoagulation") for t in af)


def test_cha2ds2_vasc_counts_a_stroke_under_a_local_code_by_its_words():
    resources, _ = bundle_resources(
        json.loads((CHARTS / "af_cha2ds2vasc_no_anticoagulant.json").read_text())
    )
    recoded = []
    for r in resources:
        if r.get("id") == "af-vasc-stroke":
            r = {
                **r,
                "code": {
                    "coding": [{"system": "urn:oid:2.16.840.1.113883.19.5", "code": "CVA-7"}],
                    "text": "Cerebral infarction",
                },
            }
        recoded.append(r)
    snapshot = build_snapshot(recoded, patient_id="af-vasc", fetched_at=AS_OF)
    assert (
        "CHA2DS2-VASc score five: hypertension, Cerebral infarction (two points), age 71, female"
        in _af_block(snapshot)
    )


@pytest.mark.parametrize(
    ("display", "ingredients", "written"),
    [
        ("metformin hydrochloride 1000 MG Oral Tablet", ("metformin",), "metformin 1000 mg"),
        ("warfarin sodium 5 MG Oral Tablet", ("warfarin",), "warfarin 5 mg"),
        # A salt as the first word is the drug itself; a salt that tells products apart stays.
        (
            "potassium chloride 20 MEQ Extended Release Oral Tablet",
            (),
            "potassium chloride 20 mEq extended release",
        ),
        (
            "metoprolol succinate 50 MG Extended Release Oral Tablet",
            ("metoprolol",),
            "metoprolol succinate 50 mg extended release",
        ),
        (
            "phenytoin sodium 100 MG Extended Release Oral Capsule",
            (),
            "phenytoin sodium 100 mg extended release",
        ),
        (
            "insulin glargine 100 UNT/ML Injectable Solution",
            (),
            "insulin glargine 100 units/mL Injectable Solution",
        ),
    ],
)
def test_the_plan_names_a_medication_as_a_note_writes_it(
    display: str, ingredients: tuple[str, ...], written: str
) -> None:
    from smartapp.suggestions.terminology import MEDICATION_NAMES

    assert MEDICATION_NAMES.note_name(display, ingredients) == written


@pytest.mark.parametrize(
    ("birth_date", "source"),
    [
        ("2025-06-01", None),  # 1 year old: NHLBI's categories start at 2; no adult goal
        ("2011-03-15", "NHLBI"),  # 15: the pediatric categories
        ("2007-11-22", "NHLBI"),  # 19 on the chart's day
        ("2006-11-22", "ACC/AHA"),  # 20: the adult goal
    ],
)
def test_the_ldl_goal_is_read_by_age(birth_date: str, source: str | None):
    resources, _ = bundle_resources(
        json.loads((CHARTS / "adolescent_ldl_borderline.json").read_text())
    )
    resources[0] = {**resources[0], "birthDate": birth_date}
    snapshot = build_snapshot(resources, patient_id=resources[0]["id"], fetched_at=AS_OF)
    goal = assessment.goal_for(ChartFacts(snapshot), assessment.knowledge(), "ldl")
    assert (goal.cite.source.split(" ")[0] if goal else None) == source


def _hfref_block(values: dict[str, float]) -> list[Statement]:
    snapshot = _with_values("hfref_gdmt_potassium_52", values)
    [draft] = ENGINE.suggest(snapshot, "assessment_plan", {})
    return list(draft.statements)


def test_hfref_offers_an_mra_only_when_the_safety_table_allows_it_and_cites_what_it_read():
    mra = "Consider a mineralocorticoid receptor antagonist"
    # Potassium 4.6 and eGFR 55: offered, citing the potassium and eGFR it was judged by.
    [offered] = [s for s in _hfref_block({"hfref-gdmt-k-1": 4.6}) if s.text.startswith(mra)]
    cited = {c.reference for c in offered.citations}
    assert {"Observation/hfref-gdmt-k-1", "Observation/hfref-gdmt-egfr-1"} <= cited
    assert offered.rule and "AHA/ACC/HFSA" in offered.rule
    # Potassium 5.0 (the guideline's "below 5.0") or eGFR 30: held back.
    for values, why in (
        ({"hfref-gdmt-k-1": 5.0}, "potassium 5.0 mmol/L"),
        ({"hfref-gdmt-k-1": 4.6, "hfref-gdmt-egfr-1": 30}, "eGFR 30 mL/min/1.73 m2"),
    ):
        block = _hfref_block(values)
        assert not any(s.text.startswith(mra) for s in block), values
        [held] = [s for s in block if "is not suggested" in s.text]
        assert held.text.startswith(
            "A mineralocorticoid receptor antagonist is not suggested: " + why
        )
        assert held.rule and "AHA/ACC/HFSA" in held.rule


def _hfref_texts(
    drop: tuple[str, ...] = (),
    dated: dict[str, str] | None = None,
    *,
    potassium: float = 5.2,
    truncated: bool = False,
) -> list[str]:
    """The HFrEF chart's assessment-and-plan lines with some results left out or redated."""
    resources, _ = bundle_resources(
        json.loads((CHARTS / "hfref_gdmt_potassium_52.json").read_text())
    )
    dated = dated or {}
    changed = []
    for r in resources:
        if r.get("id") in drop:
            continue
        if r.get("id") in dated:
            r = {**r, "effectiveDateTime": dated[r["id"]]}
        if r.get("id") == K:
            r = {**r, "valueQuantity": {**r["valueQuantity"], "value": potassium}}
        changed.append(r)
    snapshot = build_snapshot(changed, patient_id=changed[0]["id"], fetched_at=AS_OF)
    if truncated:
        cut = SnapshotProblem(
            code="truncated", resource_type="Observation", detail="read 5 of 9", newest_first=True
        )
        snapshot = replace(snapshot, problems=(cut,))
    return [s.text for d in ENGINE.suggest(snapshot, "assessment_plan", {}) for s in d.statements]


K, EGFR = "hfref-gdmt-k-1", "hfref-gdmt-egfr-1"
RAS = "an ARNI, ACE inhibitor or ARB"
MRA = "a mineralocorticoid receptor antagonist"
SGLT2 = "an SGLT2 inhibitor"
OLD = "2023-05-02"  # 42 months before the chart's day: older than result_tests.toml's 12
OLD_AGE = f"last on {OLD} (42 months old)"


@pytest.mark.parametrize(
    ("drop", "dated", "potassium", "truncated", "wanted"),
    [
        # Potassium not on file: neither pillar that reads it is judged; the note says what
        # to check, once for the pillars that share the reason.
        ((K,), {}, 4.4, False, [f"Check potassium before {RAS}; or {MRA}: none on file"]),
        (
            (K, EGFR),
            {},
            4.4,
            False,
            [f"Check eGFR and potassium before {SGLT2}; {RAS}; or {MRA}: none on file"],
        ),
        ((EGFR,), {}, 4.4, False, [f"Check eGFR before {SGLT2} or {MRA}: none on file"]),
        # Only part of the results read: "none on file" would be a guess.
        (
            (K,),
            {},
            4.4,
            True,
            [f"Check potassium before {RAS}; or {MRA}: none among the results read"],
        ),
        # Older than the test's staleness window: not judged by; the lines above show them.
        (
            (),
            {K: OLD, EGFR: OLD},
            4.4,
            False,
            [f"Check eGFR and potassium before {SGLT2}; {RAS}; or {MRA}: {OLD_AGE}"],
        ),
        # Different reasons: one line each.
        (
            (EGFR,),
            {K: OLD},
            4.4,
            False,
            [
                f"Check eGFR before {SGLT2}: none on file",
                f"Check potassium before {RAS}: {OLD_AGE}",
                f"Check potassium and eGFR before {MRA}: potassium {OLD_AGE}; no eGFR on file",
            ],
        ),
        # Potassium 5.2 holds the MRA back however old it is, said with its age.
        (
            (),
            {K: OLD},
            5.2,
            False,
            [
                f"Check potassium before {RAS}: {OLD_AGE}",
                "A mineralocorticoid receptor antagonist is not suggested: "
                f"potassium 5.2 mmol/L on {OLD} (42 months old)",
            ],
        ),
    ],
)
def test_hfref_pillars_not_judged_say_which_results_to_check(
    drop: tuple[str, ...],
    dated: dict[str, str],
    potassium: float,
    truncated: bool,
    wanted: list[str],
):
    texts_ = _hfref_texts(drop, dated, potassium=potassium, truncated=truncated)
    for line in wanted:
        assert line in texts_, texts_
    assert [t for t in texts_ if t.startswith("Check ")] == [
        w for w in wanted if w.startswith("Check ")
    ]
    if any(RAS in line for line in wanted):
        assert not any(t.startswith("Consider an ARNI") for t in texts_)
    if any(SGLT2 in line for line in wanted):
        assert "Consider an SGLT2 inhibitor" not in texts_
    assert not any(t.startswith("Consider a mineralocorticoid") for t in texts_)
    # The pillars that read no result are offered whatever is missing.
    assert any(t.startswith("Consider an evidence-based beta blocker") for t in texts_)


@pytest.mark.parametrize(
    ("display", "switch"),
    [
        ("metoprolol tartrate 25 MG Oral Tablet", "metoprolol tartrate 25 mg"),
        ("atenolol 50 MG Oral Tablet", "atenolol 50 mg"),
        ("metoprolol succinate 50 MG Extended Release Oral Tablet", None),
        ("carvedilol 25 MG Oral Tablet", None),
    ],
)
def test_hfref_on_a_beta_blocker_without_outcome_evidence_is_offered_a_switch(
    display: str, switch: str | None
):
    resources, _ = bundle_resources(
        json.loads((CHARTS / "hfref_gdmt_potassium_52.json").read_text())
    )
    furosemide = next(r for r in resources if r["id"] == "hfref-gdmt-furosemide")
    resources.append(
        {**furosemide, "id": "hfref-gdmt-bb", "medicationCodeableConcept": {"text": display}}
    )
    snapshot = build_snapshot(resources, patient_id=resources[0]["id"], fetched_at=AS_OF)
    [draft] = ENGINE.suggest(snapshot, "assessment_plan", {})
    texts_ = [s.text for s in draft.statements]
    offered = [
        s for s in draft.statements if s.text.startswith("Consider switching to an evidence-based")
    ]
    if switch is None:
        assert offered == []
    else:
        # The medication line above names the drug; the option cites its order.
        assert any(t.startswith("On ") and switch in t for t in texts_)
        [option] = offered
        assert option.text == "Consider switching to an evidence-based beta blocker"
        assert "MedicationRequest/hfref-gdmt-bb" in {c.reference for c in option.citations}
    # On a beta blocker of any kind: "start one" is not offered.
    assert not any(t.startswith("Consider an evidence-based beta blocker") for t in texts_)


def _with(name: str, changes: dict[str, dict[str, Any]], *extra: dict[str, Any]) -> ChartSnapshot:
    """The fixture chart with some resources' fields changed (by id) and others added."""
    resources, _ = bundle_resources(json.loads((CHARTS / f"{name}.json").read_text()))
    edited = [{**r, **changes.get(r["id"], {})} for r in resources]
    return build_snapshot([*edited, *extra], patient_id=resources[0]["id"], fetched_at=AS_OF)


def _said(snapshot: ChartSnapshot, kind: str = "assessment_plan") -> list[str]:
    return [s.text for d in ENGINE.suggest(snapshot, kind, {}) for s in d.statements]


def test_a_drug_started_after_the_reading_is_not_told_to_intensify_but_a_renewal_is():
    # Amlodipine ordered two days after the BP; empagliflozin hours after the HbA1c.
    htn, dm = texts("therapy_just_changed")
    assert not any(t.startswith("Consider intensifying") for t in htn + dm)
    # The same amlodipine order, renewing one written a year before, changes nothing.
    resources, _ = bundle_resources(json.loads((CHARTS / "therapy_just_changed.json").read_text()))
    [current] = [r for r in resources if r["id"] == "same-day-change-amlodipine"]
    earlier = {**current, "id": "same-day-change-amlodipine-2025", "status": "completed"}
    earlier["authoredOn"] = "2025-11-10"
    renewed = _with("therapy_just_changed", {}, earlier)
    assert any(t.startswith("Consider intensifying antihypertensive") for t in _said(renewed))
    gaps = _said(renewed, "care_gaps")
    assert any(t.startswith("Hypertension: consider reviewing treatment") for t in gaps)


def test_an_order_dated_the_readings_day_without_times_is_not_taken_for_a_change():
    # It may be the start that visit made, or a renewal written at it: the intensifying
    # option stays, and no "recheck" presumes a change.
    same_day = _with(
        "therapy_just_changed",
        {
            "same-day-change-amlodipine": {"authoredOn": "2026-11-10"},
            "same-day-change-empagliflozin": {"authoredOn": "2026-11-10"},
        },
    )
    said = _said(same_day)
    assert any(t.startswith("Consider intensifying antihypertensive") for t in said)
    assert any(t.startswith("Consider intensifying glucose-lowering") for t in said)
    assert not any(t.startswith("Recheck blood pressure") for t in said)


def test_primary_prevention_on_a_statin_is_asked_for_the_ten_year_risk_but_not_with_cad():
    [lipids] = texts("hyperlipidemia_ldl")
    risk = "Calculate the ten-year ASCVD risk (pooled cohort equations) to choose the statin"
    assert any(t.startswith(risk) for t in lipids)
    resources, _ = bundle_resources(json.loads((CHARTS / "hyperlipidemia_ldl.json").read_text()))
    [problem] = [r for r in resources if r["resourceType"] == "Condition"]
    cad = {
        **problem,
        "id": "lipid-ldl-cad",
        "code": {
            "coding": [{"system": "http://snomed.info/sct", "code": "53741008"}],
            "text": "Coronary arteriosclerosis",
        },
    }
    secondary = build_snapshot([*resources, cad], patient_id=resources[0]["id"], fetched_at=AS_OF)
    drafts = ENGINE.suggest(secondary, "assessment_plan", {})
    said = [s.text for d in drafts for s in d.statements]
    assert not any("ASCVD risk" in t for t in said)


def test_a_misspelt_option_key_is_refused_not_ignored(tmp_path: Path):
    (tmp_path / "plan_options.toml").write_text(
        '[[option]]\nid = "x"\nproblem = "hyperlipidemia"\ntext = "x"\n'
        'without_problems = ["cad"]\ncite = { source = "s", version = "1" }\n'
    )
    with pytest.raises(clinical.KnowledgeError, match="unknown key 'without_problems'"):
        assessment.knowledge([tmp_path])


def test_after_a_change_the_follow_up_is_offered_until_a_later_result_judges_it():
    said = _said(_with("t2d_htn_ckd", {"t2d-ckd-losartan": {"authoredOn": "2026-10-25"}}))
    # Losartan started after the last potassium: the labs it calls for, once.
    labs = [t for t in said if t.startswith("Check potassium and creatinine")]
    assert labs == [
        "Check potassium and creatinine two to four weeks after starting or raising an ACE "
        "inhibitor or ARB: last potassium 2026-10-20, before losartan 100 mg was ordered "
        "2026-10-25"
    ]
    # A BP taken after the start (2026-11-10, still above goal) has judged it: intensify.
    assert not any(t.startswith("Recheck blood pressure") for t in said)
    assert any(t.startswith("Consider intensifying antihypertensive") for t in said)
    # Unchanged since long before the readings: neither follow-up.
    plain = [
        s.text
        for d in ENGINE.suggest(chart("t2d_htn_ckd"), "assessment_plan", {})
        for s in d.statements
    ]
    assert not any(t.startswith(("Check potassium", "Recheck blood pressure")) for t in plain)


def test_an_sglt2_inhibitor_taken_at_an_egfr_below_20_is_not_flagged_a_proposed_one_is():
    """KDIGO 2024: not started below an eGFR of 20, but continued once started
    (`starting_only` in medication_safety.toml)."""
    from smartapp.suggestions import safety

    def rule_ids(status: str) -> set[str]:
        resources, _ = bundle_resources(
            json.loads((CHARTS / "hfref_egfr_17_sglt2_draft.json").read_text())
        )
        resources = [
            {**r, "status": status} if r.get("id") == "hf-egfr17-empagliflozin" else r
            for r in resources
        ]
        snapshot = build_snapshot(resources, patient_id=resources[0]["id"], fetched_at=AS_OF)
        flags = safety.contraindication_flags(ChartFacts(snapshot), safety.rules())
        return {f.rule.id for f in flags}

    assert "sglt2-egfr-below-20" in rule_ids("draft")
    assert "sglt2-egfr-below-20" not in rule_ids("active")


def _pregnancy_htn_with(*extra: dict[str, Any]) -> list[str]:
    name = "pregnancy_htn_bp_134_86"
    resources, _ = bundle_resources(json.loads((CHARTS / f"{name}.json").read_text()))
    snapshot = build_snapshot([*resources, *extra], patient_id=resources[0]["id"], fetched_at=AS_OF)
    return [s.text for d in ENGINE.suggest(snapshot, "assessment_plan", {}) for s in d.statements]


def test_low_dose_aspirin_in_pregnancy_is_held_back_by_an_interaction_with_what_she_takes():
    # Chronic hypertension in pregnancy calls for low-dose aspirin (USPSTF 2021), but the
    # safety tables' interaction of warfarin with NSAIDs (aspirin among them) holds.
    warfarin = {
        "resourceType": "MedicationRequest",
        "id": "preg-bp134-warfarin",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/preg-bp134"},
        "authoredOn": "2026-10-01",
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "855332",
                    "display": "warfarin sodium 5 MG Oral Tablet",
                }
            ]
        },
    }
    offered = [t for t in _pregnancy_htn_with() if t.startswith("Consider low-dose aspirin")]
    assert len(offered) == 1
    lines = _pregnancy_htn_with(warfarin)
    assert not [t for t in lines if t.startswith("Consider low-dose aspirin")]
    assert (
        "Low-dose aspirin is not suggested: on warfarin 5 mg: raises the risk of bleeding" in lines
    )
    # A proposed order is about to become therapy: the interaction holds for it too.
    lines = _pregnancy_htn_with({**warfarin, "status": "draft"})
    assert not [t for t in lines if t.startswith("Consider low-dose aspirin")]
    assert (
        "Low-dose aspirin is not suggested: with warfarin 5 mg proposed (not yet signed): "
        "raises the risk of bleeding" in lines
    )

"""smartapp.clinical: every shipped data file loads, cites its source and uses known codes."""

from pathlib import Path

import pytest

from smartapp import clinical


def test_every_shipped_value_set_loads_with_a_citation():
    sets = clinical.value_sets()
    assert "hba1c" in sets
    for value_set in sets.values():
        assert value_set.cite.source and value_set.cite.version
        assert value_set.codes or value_set.words


def test_hba1c_covers_its_equivalent_loinc_codes():
    assert clinical.value_set("hba1c").code_keys(clinical.LOINC) >= {"4548-4", "17856-6", "59261-8"}


def test_unknown_code_system_is_refused(tmp_path: Path):
    (tmp_path / "valuesets").mkdir()
    (tmp_path / "valuesets" / "bad.toml").write_text(
        '[[valueset]]\nid = "x"\ncite = { source = "s", version = "1" }\n'
        'codes = [{ system = "made-up", code = "1" }]\n'
    )
    with pytest.raises(clinical.KnowledgeError, match="unknown code system"):
        clinical.value_sets([tmp_path])


def test_missing_citation_and_empty_value_set_are_refused(tmp_path: Path):
    (tmp_path / "valuesets").mkdir()
    (tmp_path / "valuesets" / "bad.toml").write_text('[[valueset]]\nid = "x"\nwords = ["x"]\n')
    with pytest.raises(clinical.KnowledgeError, match="cite"):
        clinical.value_sets([tmp_path])
    (tmp_path / "valuesets" / "bad.toml").write_text(
        '[[valueset]]\nid = "x"\ncite = { source = "s", version = "1" }\n'
    )
    with pytest.raises(clinical.KnowledgeError, match="empty"):
        clinical.value_sets([tmp_path])


def test_a_site_file_extends_a_built_in_value_set(tmp_path: Path):
    (tmp_path / "valuesets").mkdir()
    (tmp_path / "valuesets" / "site.toml").write_text(
        '[[valueset]]\nid = "hba1c"\ncite = { source = "site", version = "1" }\n'
        'codes = [{ system = "loinc", code = "41995-2" }]\n'
    )
    assert "41995-2" in clinical.value_sets([tmp_path])["hba1c"].code_keys(clinical.LOINC)


def test_concepts_match_by_code_or_by_whole_words():
    hba1c = clinical.value_set("hba1c")
    assert hba1c.matches({"coding": [{"system": clinical.LOINC, "code": "59261-8"}]})
    assert hba1c.matches({"text": "HbA1c (point of care)"})
    assert not hba1c.matches({"text": "HbA1cX"})


def test_any_word_matches_even_where_an_earlier_word_fails_its_boundary():
    """The words are one pattern: "statin" failing its boundary inside "statins" must not
    hide "statins" starting at the same place, nor a later phrase."""
    value_set = clinical.ValueSet(
        id="t",
        title="t",
        codes=(),
        words=("statin", "statins", "lipid lowering"),
        cite=clinical.Source(source="s", version="1"),
    )
    assert value_set.matches({"text": "Statins"})
    assert value_set.matches({"coding": [{"display": "On LIPID LOWERING therapy"}]})
    assert not value_set.matches({"text": "statinsx"})
    assert not value_set.matches({"text": "lipid-lowering"})
    assert value_set.code_keys() == frozenset()
    assert value_set.code_keys(clinical.LOINC) == frozenset()


def test_every_medication_safety_rule_loads_with_a_citation_and_known_groups():
    from smartapp.suggestions import safety

    table = safety.rules()
    ids = [r.id for r in table]
    assert len(ids) == len(set(ids))
    assert {"pregnancy-ace-inhibitor", "child-codeine-tramadol-under-12"} <= set(ids)
    for rule in table:
        assert rule.cite.source and rule.cite.version and rule.say


def test_drug_groups_match_rxnorm_ingredients_and_text_only_allergies():
    assert clinical.value_set("penicillins").matches(
        {"coding": [{"system": clinical.RXNORM, "code": "723"}]}
    )
    assert clinical.value_set("sulfonamide_antibiotics").matches({"text": "Sulfa drugs"})
    assert clinical.value_set("penicillins").matches({"text": "PCN"})
    assert not clinical.value_set("sulfonamide_antibiotics").matches({"text": "sulfasalazine"})


def test_every_result_test_names_loinc_codes_and_a_cited_staleness_window():
    from smartapp.suggestions.facts import result_tests

    tests = result_tests()
    assert {t.id for t in tests} >= {"hba1c", "creatinine", "egfr", "potassium", "body_weight"}
    hba1c = next(t for t in tests if t.id == "hba1c")
    assert {"4548-4", "17856-6", "59261-8"} <= hba1c.valueset.code_keys(clinical.LOINC)
    creatinine = next(t for t in tests if t.id == "creatinine")
    assert {"2160-0", "14682-9"} <= creatinine.valueset.code_keys(clinical.LOINC)
    for test in tests:
        assert test.cite.source and test.cite.version, test.id
        assert test.stale_months is None or test.stale_months >= 1


def test_problem_groups_and_drug_classes_come_from_their_data_files():
    from smartapp.suggestions import terminology

    groups = clinical.read_toml(clinical.DATA_DIR / "problem_groups.toml")["group"]
    classes = clinical.read_toml(clinical.DATA_DIR / "drug_classes.toml")["class"]
    assert [g.id for g in terminology.PROBLEM_GROUPS] == [g["id"] for g in groups]
    assert [c.id for c in terminology.DRUG_CLASSES] == [c["id"] for c in classes]
    assert all(g.get("cite") for g in groups) and all(c.get("cite") for c in classes)
    assert terminology.GROUPS_BY_ID["hypertension"].results == (terminology.BP_PANEL,)
    assert "lisinopril" in terminology.KNOWN_DRUG_NAMES


@pytest.mark.parametrize(
    ("code", "groups"),
    [
        # Anaemia of CKD is anaemia, by its codes and by its words alone, never a second CKD.
        ({"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "D63.1"}]},
         {"anemia", "anemia_ckd"}),
        ({"coding": [{"system": "http://snomed.info/sct", "code": "707323002"}]},
         {"anemia", "anemia_ckd"}),
        ({"text": "Anemia in chronic kidney disease"}, {"anemia", "anemia_ckd"}),
        ({"text": "Anaemia of CKD"}, {"anemia", "anemia_ckd"}),
        ({"text": "Chronic kidney disease stage 3a"}, {"ckd"}),
        ({"text": "Iron deficiency anemia"}, {"anemia", "iron_deficiency_anemia"}),
        ({"text": "Anemia, unspecified"}, {"anemia"}),
        ({"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M1A.071"}]},
         {"gout"}),
        ({"text": "Gout of left foot"}, {"gout"}),
        ({"text": "Pseudogout of knee"}, set()),
        ({"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "N40.1"}]},
         {"bph"}),
        ({"text": "Enlarged prostate"}, {"bph"}),
    ],
)  # fmt: skip
def test_problem_groups_of_anaemia_of_ckd_gout_and_bph(code, groups):
    from smartapp.suggestions.facts import problem_groups

    assert {g.id for g in problem_groups({"code": code})} == groups


def test_a_drug_class_treating_an_unknown_problem_group_is_refused():
    from smartapp.suggestions import terminology

    item = {
        "id": "x",
        "label": "x",
        "duplicate_group": "x",
        "treats": ["hypertensoin"],
        "ingredients": {"1": "x"},
        "cite": {"source": "RxNorm", "version": "1"},
    }
    with pytest.raises(clinical.KnowledgeError, match="no problem group"):
        terminology._drug_class(item, terminology.GROUPS_BY_ID, where="drug_classes.toml")


def test_every_safety_rule_has_a_topic_in_its_tables_words():
    """The CDS Hooks card names each hint by topic: every rule gets one, made of value-set
    titles (never its id, never chart text)."""
    from smartapp.suggestions import safety

    for rule in safety.rules():
        topic = safety.topic(rule.id)
        assert topic.startswith(f"{rule.kind}: ") and rule.id not in topic
    assert (
        safety.topic("kidney-metformin-egfr-30-45") == "contraindication: Metformin with eGFR 30-45"
    )
    assert safety.topic("no-such-rule") == "a medication safety check"


def _groups_of(codings: list[tuple[str, str]], text: str) -> set[str]:
    from smartapp.suggestions.facts import problem_groups

    systems = {"icd": "http://hl7.org/fhir/sid/icd-10-cm", "sct": "http://snomed.info/sct"}
    code = {"coding": [{"system": systems[s], "code": c} for s, c in codings], "text": text}
    return {g.id for g in problem_groups({"resourceType": "Condition", "code": code})}


@pytest.mark.parametrize(
    ("codings", "text", "groups"),
    [
        ([("icd", "I25.10")], "Coronary arteriosclerosis", {"cad", "ascvd"}),
        ([("icd", "I63.9")], "Cerebral infarction", {"cerebrovascular", "ascvd"}),
        ([("icd", "Z86.73")], "History of stroke", {"cerebrovascular", "ascvd"}),
        ([("sct", "266257000")], "TIA", {"cerebrovascular", "ascvd"}),
        ([("icd", "I70.213")], "PAD with claudication", {"pad", "ascvd"}),
        ([("icd", "I73.9")], "Peripheral vascular disease", {"pad", "ascvd"}),
        ([], "Peripheral artery disease", {"pad", "ascvd"}),
        ([], "Old ischemic stroke", {"cerebrovascular", "ascvd"}),
        # Bleeding is not atherosclerosis: never clinical ASCVD, by code or by words, even
        # when the text says only "Stroke" (the code decides).
        ([("icd", "I61.9")], "Stroke", {"hemorrhagic_stroke"}),
        ([("sct", "274100004")], "Stroke", {"hemorrhagic_stroke"}),
        ([("icd", "I69.10")], "Late effect of stroke", {"hemorrhagic_stroke"}),
        ([], "Hemorrhagic stroke", {"hemorrhagic_stroke"}),
        ([("sct", "230690007")], "CVA due to cerebral haemorrhage", {"hemorrhagic_stroke"}),
        # Transient global amnesia is G45.4, not a TIA; aortic atherosclerosis on imaging,
        # neurogenic claudication and heat stroke are not clinical ASCVD either.
        ([("icd", "G45.4")], "Transient global amnesia", set()),
        ([("icd", "I70.0")], "Atherosclerosis of aorta", set()),
        ([], "Neurogenic claudication", set()),
        ([], "Heat stroke", set()),
        ([], "Family history of stroke", set()),
    ],
)
def test_clinical_ascvd_is_coronary_disease_ischaemic_stroke_tia_or_pad(codings, text, groups):
    assert _groups_of(codings, text) == groups


def test_an_umbrella_group_has_no_codes_and_includes_only_earlier_groups():
    from smartapp.suggestions import terminology

    base = {"lay": "x", "cite": {"source": "s", "version": "1"}}
    earlier = dict(terminology.GROUPS_BY_ID)
    with pytest.raises(clinical.KnowledgeError, match="includes no earlier group"):
        terminology._problem_group({**base, "id": "u", "includes": ["later"]}, earlier, where="f")
    with pytest.raises(clinical.KnowledgeError, match="has no codes"):
        terminology._problem_group(
            {**base, "id": "u", "includes": ["cad"], "icd10": ["I70"]}, earlier, where="f"
        )
    with pytest.raises(clinical.KnowledgeError, match="includes a group that includes"):
        terminology._problem_group({**base, "id": "u", "includes": ["ascvd"]}, earlier, where="f")

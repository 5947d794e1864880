"""The built-in rules' clinical tables: problem groups, lab codes and drug classes, as Python.

What the tables hold lives in reviewed data files under `smartapp/clinical/data/`
(`problem_groups.toml`, `drug_classes.toml`, `result_names.toml` and the LOINC value sets
in `valuesets/`); this module only loads them into the typed constants the rules use, so a
clinician reviews the files, not this code. Problems match by SNOMED CT code, by ICD-10-CM
code prefix, then by words in the text; drugs by RxNorm ingredient code, then by the
ingredient's name as a whole word (see the files' headers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smartapp import clinical

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
UCUM = "http://unitsofmeasure.org"

# -- laboratory and vital-sign codes (LOINC), from the value sets ---------------------------


def _loinc(vs_id: str) -> tuple[str, ...]:
    return tuple(c.code for c in clinical.value_set(vs_id).codes if c.system == LOINC)


HBA1C = _loinc("hba1c")
EGFR = _loinc("egfr")
CREATININE = _loinc("creatinine")
HEMOGLOBIN = _loinc("hemoglobin")
UACR = _loinc("uacr")
BP_PANEL = _loinc("blood_pressure")
BP_SYSTOLIC = _loinc("bp_systolic")
BP_DIASTOLIC = _loinc("bp_diastolic")
KIDNEY_FUNCTION = EGFR + CREATININE
LDL = _loinc("ldl")
TOTAL_CHOLESTEROL = _loinc("total_cholesterol")
#: A lipid panel counts as done when either of these was measured (LDL preferred).
LIPIDS = LDL + TOTAL_CHOLESTEROL

# -- vaccines (CVX) -----------------------------------------------------------------------

#: Seasonal influenza vaccines (value set "influenza_vaccine", valuesets/vaccines.toml).
INFLUENZA_CVX: frozenset[str] = frozenset(
    c.code for c in clinical.value_set("influenza_vaccine").codes if c.system == CVX
)

_RESULT_NAMES = clinical.read_toml(clinical.DATA_DIR / "result_names.toml")
#: Short names for results the rules talk about (the chart's own text for anything else).
LAB_NAMES: dict[str, str] = {str(k): str(v) for k, v in _RESULT_NAMES["names"].items()}
#: Results shown in the concise vitals and labs trend (any abnormal result is shown too).
KEY_RESULTS: tuple[str, ...] = tuple(str(code) for code in _RESULT_NAMES["key_results"])


# -- problems ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ProblemGroup:
    id: str
    #: Plain words for the patient instructions.
    lay: str
    snomed: frozenset[str] = frozenset()
    #: ICD-10-CM codes that start with one of these (dots ignored: "E11" matches "E11.9").
    icd10: tuple[str, ...] = ()
    #: Lower-case words that identify the problem in its text, and words that rule it out.
    words: tuple[str, ...] = ()
    not_words: tuple[str, ...] = ()
    #: The latest results of these LOINC codes belong in the problem summary.
    results: tuple[tuple[str, ...], ...] = ()
    #: A problem on the list with no medication for it is worth a reconciliation hint.
    expects_treatment: bool = False
    #: An umbrella group ("ascvd"): a condition in one of these groups is in this one too.
    #: It has no codes or words of its own, and the patient is told of the member group.
    includes: frozenset[str] = frozenset()


# -- drug classes ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DrugClass:
    id: str
    label: str
    #: Two different drugs in the same duplicate group are a possible duplication.
    duplicate_group: str
    #: Problem groups this class treats: a problem in one of them with no such drug on the
    #: list is a reconciliation hint, and the plan lists these drugs under the problem.
    treats: frozenset[str]
    #: Further accepted indications: a drug with neither `treats` nor `also_for` among the
    #: active problems is a reconciliation hint ("no matching problem").
    also_for: frozenset[str] = frozenset()
    #: RxNorm ingredient (TTY=IN) RxCUI → ingredient name.
    ingredients: dict[str, str]


def _strings(item: Mapping[str, Any], key: str, *, where: str) -> tuple[str, ...]:
    values = item.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise clinical.KnowledgeError(f"{where}: {key} must be a list of strings")
    return tuple(values)


def _problem_group(
    item: Mapping[str, Any], earlier: Mapping[str, ProblemGroup], *, where: str
) -> ProblemGroup:
    where = f"{where} group {item.get('id')!r}"
    if not item.get("id") or not item.get("lay"):
        raise clinical.KnowledgeError(f"{where}: needs id and lay")
    clinical.source(item.get("cite"), where=where)
    includes = frozenset(_strings(item, "includes", where=where))
    if unknown := includes - set(earlier):
        raise clinical.KnowledgeError(f"{where}: includes no earlier group {sorted(unknown)}")
    if includes and any(item.get(k) for k in ("snomed", "icd10", "words", "not_words")):
        raise clinical.KnowledgeError(f"{where}: a group that includes others has no codes")
    if includes & {g.id for g in earlier.values() if g.includes}:
        raise clinical.KnowledgeError(f"{where}: includes a group that includes others")
    return ProblemGroup(
        id=str(item["id"]),
        lay=str(item["lay"]),
        snomed=frozenset(_strings(item, "snomed", where=where)),
        icd10=_strings(item, "icd10", where=where),
        words=tuple(w.lower() for w in _strings(item, "words", where=where)),
        not_words=tuple(w.lower() for w in _strings(item, "not_words", where=where)),
        results=tuple(_loinc(vs_id) for vs_id in _strings(item, "results", where=where)),
        expects_treatment=bool(item.get("expects_treatment", False)),
        includes=includes,
    )


def _drug_class(
    item: Mapping[str, Any], groups: Mapping[str, ProblemGroup], *, where: str
) -> DrugClass:
    where = f"{where} class {item.get('id')!r}"
    ingredients = item.get("ingredients")
    if not item.get("id") or not item.get("label") or not item.get("duplicate_group"):
        raise clinical.KnowledgeError(f"{where}: needs id, label and duplicate_group")
    if not isinstance(ingredients, Mapping) or not ingredients:
        raise clinical.KnowledgeError(f"{where}: needs ingredients = {{ RxCUI = name }}")
    clinical.source(item.get("cite"), where=where)
    treats = frozenset(_strings(item, "treats", where=where))
    also_for = frozenset(_strings(item, "also_for", where=where))
    if unknown := (treats | also_for) - set(groups):
        raise clinical.KnowledgeError(f"{where}: no problem group {sorted(unknown)}")
    return DrugClass(
        id=str(item["id"]),
        label=str(item["label"]),
        duplicate_group=str(item["duplicate_group"]),
        treats=treats,
        also_for=also_for,
        ingredients={str(k): str(v).lower() for k, v in ingredients.items()},
    )


def _load_groups() -> tuple[ProblemGroup, ...]:
    path = clinical.DATA_DIR / "problem_groups.toml"
    groups: dict[str, ProblemGroup] = {}
    for item in clinical.read_toml(path)["group"]:
        group = _problem_group(item, groups, where=str(path))
        groups[group.id] = group
    return tuple(groups.values())


PROBLEM_GROUPS: tuple[ProblemGroup, ...] = _load_groups()
GROUPS_BY_ID = {g.id: g for g in PROBLEM_GROUPS}


def _load_classes() -> tuple[DrugClass, ...]:
    path = clinical.DATA_DIR / "drug_classes.toml"
    return tuple(
        _drug_class(item, GROUPS_BY_ID, where=str(path))
        for item in clinical.read_toml(path)["class"]
    )


DRUG_CLASSES: tuple[DrugClass, ...] = _load_classes()

#: Every ingredient name the tables know: the grounding verifier's list of drug names.
KNOWN_DRUG_NAMES: frozenset[str] = frozenset(
    name for cls in DRUG_CLASSES for name in cls.ingredients.values()
)


# -- how a note names a medication ---------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MedicationNames:
    """`medication_names.toml`: the words a note leaves out of an RxNorm display."""

    drop_forms: tuple[str, ...]
    drop_salts: frozenset[str]
    keep_salt: frozenset[str]
    units: Mapping[str, str]

    def note_name(self, display: str, ingredients: tuple[str, ...] = ()) -> str:
        """ "metformin hydrochloride 1000 MG Oral Tablet" -> "metformin 1000 mg"."""
        words = display.split()
        out: list[str] = []
        for index, word in enumerate(words):
            previous = out[-1].lower() if out else ""
            if (
                index > 0
                and word.lower() in self.drop_salts
                and previous.isalpha()
                and previous not in self.keep_salt
                and (not ingredients or previous in ingredients)
            ):
                continue
            out.append(self.units.get(word, word))
        text = " ".join(out)
        for form in self.drop_forms:
            if text.endswith(" " + form):
                text = text[: -len(form) - 1]
        return text


def _load_medication_names() -> MedicationNames:
    path = clinical.DATA_DIR / "medication_names.toml"
    data = clinical.read_toml(path)
    clinical.source(data.get("cite"), where=str(path))
    return MedicationNames(
        drop_forms=_strings(data, "drop_forms", where=str(path)),
        drop_salts=frozenset(w.lower() for w in _strings(data, "drop_salts", where=str(path))),
        keep_salt=frozenset(w.lower() for w in _strings(data, "keep_salt", where=str(path))),
        units={str(k): str(v) for k, v in (data.get("words") or {}).items()},
    )


MEDICATION_NAMES: MedicationNames = _load_medication_names()

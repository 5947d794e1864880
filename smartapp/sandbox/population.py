"""The sandbox's synthetic patients: carebundle charts given history, medicines and notes.

carebundle (https://pypi.org/project/carebundle/) draws one clinically coherent visit per
patient and, with `generate_history`, a blood-pressure course across visits. This module
turns those into longitudinal charts with readable ids: earlier visits with their labs and
vitals, stopped medicines, Medication resources (separate and contained), allergies (or a
"no known allergy" record, as EHRs document allergy status), procedures (SNOMED CT, CPT),
immunizations (CVX), clinicians and existing notes. Every chart is deterministic for a
seed. FHIR R4: https://hl7.org/fhir/R4/
"""

from __future__ import annotations

import base64
import copy
import html
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from carebundle import generate_bundle, generate_history, to_json
from carebundle.terminology import codes as cb

Resource = dict[str, Any]

DEFAULT_SEED = 20261123
#: The most recent visit of every chart. Fixed, not today: charts must be reproducible.
REFERENCE_DATE = date(2026, 10, 15)
BENCH_PATIENT_ID = "bench-large"

LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
CVX = "http://hl7.org/fhir/sid/cvx"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.19.5.99999.1"
STAFF_ID_SYSTEM = "urn:oid:2.16.840.1.113883.19.5.99999.2"
_HTEST = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "code": "HTEST",
    "display": "test health data",
}


@dataclass(frozen=True)
class Clinician:
    id: str
    given: str
    family: str
    prefix: str
    suffix: str
    specialty: str

    @property
    def display(self) -> str:
        return f"{self.prefix} {self.given} {self.family}".strip()


#: The EHR's users. The first is who is signed in by default.
CLINICIANS = (
    Clinician("dr-ada-lovelace", "Ada", "Lovelace", "Dr", "MD", "Internal medicine"),
    Clinician("dr-rene-laennec", "René", "Laennec", "Dr", "MD", "Cardiology"),
    Clinician("np-mary-seacole", "Mary", "Seacole", "", "NP", "Family practice"),
    Clinician("dr-william-osler", "William", "Osler", "Dr", "MD", "General medicine"),
)

_GIVEN_F = (
    "Amara",
    "Beatriz",
    "Chiara",
    "Dolores",
    "Eleanor",
    "Fatima",
    "Grace",
    "Hana",
    "Ingrid",
    "Joanna",
    "Keiko",
    "Lucía",
    "Maya",
    "Nadia",
    "Olivia",
    "Priya",
    "Rosa",
    "Sofia",
    "Tamsin",
    "Ulla",
)
_GIVEN_M = (
    "Aaron",
    "Bilal",
    "Carlos",
    "Dmitri",
    "Elijah",
    "Femi",
    "Gabriel",
    "Hiro",
    "Isaac",
    "Jamal",
    "Kwame",
    "Liam",
    "Mateo",
    "Nikhil",
    "Omar",
    "Pavel",
    "Rafael",
    "Samuel",
    "Tomás",
    "Viktor",
)
_FAMILY = (
    "Okafor",
    "Lindqvist",
    "Ramirez",
    "Nakamura",
    "Haddad",
    "Kowalski",
    "Patel",
    "O'Brien",
    "Nguyen",
    "Schmidt",
    "Mensah",
    "Rossi",
    "Costa",
    "Kim",
    "Adeyemi",
    "Larsen",
    "Moreau",
    "Yilmaz",
    "Silva",
    "Murphy",
    "Cohen",
    "Andersson",
    "Dubois",
    "Fernández",
    "Zhou",
)

# Profiles cycle so every kind of chart appears in a small population.
_PROFILE_CYCLE = (
    "type2_diabetes",
    "hypertension",
    "ckd_stage3",
    "anaemia",
    "healthy",
    "type2_diabetes",
    "hypertension",
    "ckd_stage3",
)


@dataclass(frozen=True)
class Course:
    """How often a profile's patient is seen and which panels each visit draws."""

    visits: int
    interval_days: int
    #: panel -> every how many visits it is drawn (1: every visit).
    panel_every: dict[str, int] = field(default_factory=dict)


_COURSES = {
    "type2_diabetes": Course(6, 91, {"hba1c": 1, "cmp": 2, "lipid": 4, "albuminuria": 4, "cbc": 4}),
    "hypertension": Course(5, 120, {"cmp": 1, "lipid": 3, "cbc": 3, "hba1c": 3, "albuminuria": 6}),
    "ckd_stage3": Course(6, 91, {"cmp": 1, "cbc": 2, "albuminuria": 2, "lipid": 4, "hba1c": 4}),
    "anaemia": Course(5, 60, {"cbc": 1, "cmp": 2, "lipid": 5, "hba1c": 5, "albuminuria": 6}),
    "healthy": Course(3, 365, {"cmp": 1, "cbc": 1, "lipid": 1, "hba1c": 1, "albuminuria": 3}),
    BENCH_PATIENT_ID: Course(
        14, 91, {"hba1c": 1, "cmp": 1, "cbc": 2, "lipid": 2, "albuminuria": 2}
    ),
}

# LOINC codes of the analytes whose history should trend rather than wander:
# (profile or "*") -> code -> relative change per visit further back in time.
_TRENDS: dict[str, dict[str, float]] = {
    "type2_diabetes": {"4548-4": 0.045, "2345-7": 0.05},  # glycaemia better under treatment
    "ckd_stage3": {"2160-0": -0.035, "98979-8": 0.04},  # kidney function declining
    "anaemia": {"718-7": 0.03, "4544-3": 0.03},  # haemoglobin falling
    BENCH_PATIENT_ID: {"4548-4": 0.03, "2160-0": -0.025, "98979-8": 0.03, "29463-7": -0.006},
}
_STABLE = {"8302-2"}  # body height

_BP_CODE = "85354-9"
_PANEL_CODES = {
    "24323-8": "cmp",
    "58410-2": "cbc",
    "57698-3": "lipid",
    "4548-4": "hba1c",
    "9318-7": "albuminuria",
}


@dataclass(frozen=True)
class Med:
    code: str
    display: str
    dose: str


def _med(code: cb.Code, dose: str) -> Med:
    return Med(code.code, code.display, dose)


AMOXICILLIN_500 = Med(
    "308191",
    "amoxicillin 500 MG Oral Capsule",
    "Take 1 capsule by mouth three times daily for 7 days",
)
_DOSES = {
    cb.METFORMIN_500.code: "Take 1 tablet by mouth twice daily with meals",
    cb.METFORMIN_1000.code: "Take 1 tablet by mouth twice daily with meals",
    cb.GLIPIZIDE_5.code: "Take 1 tablet by mouth once daily before breakfast",
    cb.FUROSEMIDE_40.code: "Take 1 tablet by mouth every morning",
    cb.FERROUS_SULFATE_325.code: "Take 1 tablet by mouth once daily with orange juice",
    cb.LEVOTHYROXINE_50.code: "Take 1 tablet by mouth every morning on an empty stomach",
    cb.OMEPRAZOLE_20.code: "Take 1 capsule by mouth once daily before breakfast",
    cb.GABAPENTIN_300.code: "Take 1 capsule by mouth three times daily",
}
_DEFAULT_DOSE = "Take 1 tablet by mouth once daily"

#: Earlier prescriptions, stopped or completed, by profile: (med, status, reason, years ago).
_PAST_MEDS: dict[str, tuple[tuple[Med, str, str, float], ...]] = {
    "type2_diabetes": (
        (
            _med(cb.GLIPIZIDE_5, _DOSES[cb.GLIPIZIDE_5.code]),
            "stopped",
            "Recurrent hypoglycaemia",
            2.5,
        ),
    ),
    # Stopped within the year: the app reads stopped orders of the last 12 months.
    "hypertension": ((_med(cb.LISINOPRIL_10, _DEFAULT_DOSE), "stopped", "Dry cough", 0.7),),
    "ckd_stage3": (
        (
            _med(cb.SIMVASTATIN_20, "Take 1 tablet by mouth at bedtime"),
            "stopped",
            "Switched to atorvastatin",
            2.0,
        ),
    ),
    "anaemia": (
        (
            _med(cb.FERROUS_SULFATE_325, _DOSES[cb.FERROUS_SULFATE_325.code]),
            "completed",
            "Course completed",
            1.0,
        ),
    ),
    "healthy": ((AMOXICILLIN_500, "completed", "Course completed", 1.5),),
}

#: "No known allergy" records (SNOMED CT), for charts with no allergy: EHRs ask for the
#: allergy status at intake and record its absence explicitly.
_NO_KNOWN_ALLERGY = (
    ("716186003", "No known allergy (situation)", "No known allergy"),
    ("409137002", "No known drug allergy (situation)", "No known drug allergy"),
)
#: A "healthy" chart still has a common problem and its treatment on file.
_HEALTHY_PROBLEM = ("K21.9", "Gastro-esophageal reflux disease without esophagitis")
_HEALTHY_MED = _med(cb.OMEPRAZOLE_20, _DOSES[cb.OMEPRAZOLE_20.code])
_IRON = _med(cb.FERROUS_SULFATE_325, _DOSES[cb.FERROUS_SULFATE_325.code])
#: Oxygen saturation (%) cannot exceed 100, whatever the noise added to history.
_PERCENT_MAX = {"59408-5": 100, "2708-6": 100}

_BENCH_ACTIVE = tuple(
    _med(c, _DOSES.get(c.code, _DEFAULT_DOSE))
    for c in (
        cb.METFORMIN_1000,
        cb.EMPAGLIFLOZIN_10,
        cb.ATORVASTATIN_40,
        cb.LISINOPRIL_20,
        cb.AMLODIPINE_10,
        cb.CARVEDILOL_12_5,
        cb.FUROSEMIDE_40,
        cb.ASPIRIN_81,
        cb.LEVOTHYROXINE_50,
        cb.OMEPRAZOLE_20,
        cb.SERTRALINE_50,
        cb.GABAPENTIN_300,
    )
)
_BENCH_PAST = (
    (_med(cb.METFORMIN_500, _DOSES[cb.METFORMIN_500.code]), "stopped", "Dose increased", 4.0),
    (_med(cb.GLIPIZIDE_5, _DOSES[cb.GLIPIZIDE_5.code]), "stopped", "Recurrent hypoglycaemia", 3.5),
    (_med(cb.LISINOPRIL_10, _DEFAULT_DOSE), "stopped", "Dose increased", 3.0),
    (
        _med(cb.SIMVASTATIN_20, "Take 1 tablet by mouth at bedtime"),
        "stopped",
        "Switched to atorvastatin",
        2.8,
    ),
    (_med(cb.AMLODIPINE_5, _DEFAULT_DOSE), "stopped", "Dose increased", 2.2),
    (_med(cb.SITAGLIPTIN_100, _DEFAULT_DOSE), "stopped", "Switched to empagliflozin", 1.6),
    (
        _med(cb.FERROUS_SULFATE_325, _DOSES[cb.FERROUS_SULFATE_325.code]),
        "completed",
        "Course completed",
        1.2,
    ),
    (AMOXICILLIN_500, "completed", "Course completed", 0.7),
)

#: (code, display, clinical status, years since onset, years since abatement or None)
_BENCH_CONDITIONS = (
    ("E11.22", "Type 2 diabetes mellitus with diabetic chronic kidney disease", "active", 14, None),
    ("N18.31", "Chronic kidney disease, stage 3a", "active", 5, None),
    ("I10", "Essential (primary) hypertension", "active", 18, None),
    ("E78.5", "Hyperlipidemia, unspecified", "active", 16, None),
    ("E66.9", "Obesity, unspecified", "active", 20, None),
    (
        "I25.10",
        "Atherosclerotic heart disease of native coronary artery without angina pectoris",
        "active",
        6,
        None,
    ),
    ("I48.91", "Unspecified atrial fibrillation", "active", 3, None),
    ("I50.9", "Heart failure, unspecified", "active", 2, None),
    ("J44.9", "Chronic obstructive pulmonary disease, unspecified", "active", 8, None),
    ("G47.33", "Obstructive sleep apnea (adult) (pediatric)", "active", 7, None),
    ("K21.9", "Gastro-esophageal reflux disease without esophagitis", "active", 10, None),
    ("M17.11", "Unilateral primary osteoarthritis, right knee", "active", 9, None),
    ("F32.9", "Major depressive disorder, single episode, unspecified", "active", 4, None),
    ("E03.9", "Hypothyroidism, unspecified", "active", 11, None),
    ("D63.1", "Anemia in chronic kidney disease", "active", 2, None),
    ("E55.9", "Vitamin D deficiency, unspecified", "active", 3, None),
    ("M10.9", "Gout, unspecified", "active", 6, None),
    ("I73.9", "Peripheral vascular disease, unspecified", "active", 4, None),
    ("E11.40", "Type 2 diabetes mellitus with diabetic neuropathy, unspecified", "active", 5, None),
    ("Z87.891", "Personal history of nicotine dependence", "active", 12, None),
    ("J18.9", "Pneumonia, unspecified organism", "resolved", 2.5, 2.4),
    ("N39.0", "Urinary tract infection, site not specified", "resolved", 1.1, 1.05),
    ("J06.9", "Acute upper respiratory infection, unspecified", "resolved", 0.6, 0.55),
)

_RESOLVED_CONDITIONS = (
    ("J06.9", "Acute upper respiratory infection, unspecified", 0.8, 0.75),
    ("N39.0", "Urinary tract infection, site not specified", 1.9, 1.85),
    ("S93.401A", "Sprain of unspecified ligament of right ankle, initial encounter", 3.2, 3.0),
)

# Allergy substances (RxNorm ingredients, as carebundle emits) and reactions (SNOMED CT).
_ALLERGENS = (
    ("medication", cb.ALLERGEN_PENICILLIN_G, ("271807003", "Eruption of skin"), "high"),
    ("medication", cb.ALLERGEN_SULFAMETHOXAZOLE, ("126485001", "Urticaria"), "low"),
    ("medication", cb.ALLERGEN_CODEINE, ("422587007", "Nausea"), "low"),
    (
        "food",
        cb.Code(SNOMED, "256349002", "Peanut - dietary (substance)"),
        ("39579001", "Anaphylaxis"),
        "high",
    ),
    ("medication", cb.ALLERGEN_ASPIRIN, ("267036007", "Dyspnea"), "high"),
)

#: Procedures: (system, code, display, who qualifies, years ago).
_PROCEDURES = (
    (SNOMED, "73761001", "Colonoscopy", "age50", 3.5),
    (SNOMED, "71651007", "Mammography", "female", 1.2),
    (SNOMED, "29303009", "Electrocardiographic procedure", "cardio", 0.9),
    (SNOMED, "40701008", "Echocardiography", "cardio", 2.1),
    (CPT, "92250", "Fundus photography with interpretation and report", "diabetes", 0.7),
    (SNOMED, "80146002", "Appendectomy", "every5", 22.0),
    (SNOMED, "38102005", "Cholecystectomy", "every7", 9.0),
)

_VACCINES = {
    "flu": ("150", "Influenza, injectable, quadrivalent, preservative free"),
    # Adults 65 and older are offered a high-dose (or adjuvanted) influenza vaccine.
    "flu_high_dose": (
        "197",
        "influenza, high-dose seasonal, quadrivalent, .7mL dose, preservative free",
    ),
    "covid": ("208", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose"),
    "tdap": ("115", "Tdap"),
    "ppsv23": ("33", "pneumococcal polysaccharide PPV23"),
    "zoster": ("187", "zoster vaccine recombinant"),
}


# -- small builders ---------------------------------------------------------------------
def _meta() -> Resource:
    return {"security": [dict(_HTEST)]}


def _narrative(text: str) -> Resource:
    return {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p><b>SYNTHETIC TEST DATA — not a '
        f"real person.</b></p><p>{html.escape(text)}</p></div>",
    }


def _concept(system: str, code: str, display: str) -> Resource:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _ref(resource_type: str, resource_id: str, display: str | None = None) -> Resource:
    ref: Resource = {"reference": f"{resource_type}/{resource_id}"}
    if display:
        ref["display"] = display
    return ref


def _years_before(day: date, years: float) -> date:
    return day - timedelta(days=round(years * 365.25))


def _clinical_status(code: str, display: str) -> Resource:
    return _concept("http://terminology.hl7.org/CodeSystem/condition-clinical", code, display)


def practitioner_resource(clinician: Clinician) -> Resource:
    name: Resource = {"use": "official", "family": clinician.family, "given": [clinician.given]}
    if clinician.prefix:
        name["prefix"] = [clinician.prefix]
    name["suffix"] = [clinician.suffix]
    return {
        "resourceType": "Practitioner",
        "id": clinician.id,
        "meta": _meta(),
        "text": _narrative(
            f"{clinician.display}, {clinician.suffix}, {clinician.specialty} (synthetic)."
        ),
        "identifier": [{"system": STAFF_ID_SYSTEM, "value": clinician.id.upper()}],
        "active": True,
        "name": [name],
        "telecom": [{"system": "phone", "value": "555-0100", "use": "work"}],
        "qualification": [{"code": {"text": f"{clinician.suffix}, {clinician.specialty}"}}],
    }


def _decimal_places(value: Any) -> int:
    if isinstance(value, int):
        return 0
    text = format(Decimal(str(value)), "f")
    return len(text.split(".")[1]) if "." in text else 0


def _scaled(value: Any, factor: float) -> Any:
    """value × factor, keeping the precision the laboratory reported."""
    places = _decimal_places(value)
    result = float(value) * factor
    if places == 0:
        return int(round(result))
    return round(result, places)


# -- one chart ----------------------------------------------------------------------------
class _Chart:
    """One patient's resources under construction, with readable, per-patient ids."""

    _ABBREVIATIONS = {
        "Encounter": "enc",
        "Condition": "cond",
        "Observation": "obs",
        "DiagnosticReport": "dr",
        "MedicationRequest": "medrx",
        "AllergyIntolerance": "allergy",
        "Procedure": "proc",
        "Immunization": "imm",
        "DocumentReference": "doc",
    }

    def __init__(self, patient_id: str) -> None:
        self.patient_id = patient_id
        self.resources: list[Resource] = []
        self.counters: dict[str, int] = {}
        self.shared: dict[str, Resource] = {}  # Practitioner and Medication, by reference

    def new_id(self, resource_type: str) -> str:
        n = self.counters.get(resource_type, 0) + 1
        self.counters[resource_type] = n
        return f"{self.patient_id}-{self._ABBREVIATIONS[resource_type]}-{n:03d}"

    def add(self, resource: Resource) -> Resource:
        self.resources.append(resource)
        return resource

    def of_type(self, resource_type: str) -> list[Resource]:
        return [r for r in self.resources if r["resourceType"] == resource_type]


def _carebundle_resources(bundle_json: str) -> list[Resource]:
    """A transaction Bundle's resources, references still urn:uuid, fullUrl kept aside."""
    payload = json.loads(bundle_json)
    out = []
    for entry in payload.get("entry", []):
        resource = entry["resource"]
        resource["_fullUrl"] = entry.get("fullUrl")
        out.append(resource)
    return out


def _rewrite(node: Any, mapping: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {
            k: (
                mapping.get(v, v)
                if k == "reference" and isinstance(v, str)
                else _rewrite(v, mapping)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(item, mapping) for item in node]
    return node


def _loinc(resource: Resource) -> str | None:
    for coding in resource.get("code", {}).get("coding", []):
        if coding.get("system") == LOINC:
            return str(coding.get("code"))
    return None


def _with_time(instant: str, day: date) -> str:
    """`instant` moved to `day`, keeping its time of day."""
    return day.isoformat() + instant[10:]


def _build_chart(
    *,
    index: int,
    seed: int,
    patient_id: str,
    profile: str,
    sex: str,
    age_range: tuple[int, int],
    name: tuple[str, str],
) -> _Chart:
    rng = random.Random(f"{seed}:{index}:{patient_id}")
    course = _COURSES[patient_id if patient_id == BENCH_PATIENT_ID else profile]
    carebundle_profile = "type2_diabetes" if patient_id == BENCH_PATIENT_ID else profile
    attending = CLINICIANS[index % len(CLINICIANS)]
    chart = _Chart(patient_id)
    # Visits are not all on one calendar day across the population.
    last_visit = REFERENCE_DATE - timedelta(days=rng.randrange(0, 21))

    main = _carebundle_resources(
        to_json(
            generate_bundle(
                profile=carebundle_profile,
                seed=seed,
                sex=sex,
                age_range=age_range,
                reference_date=last_visit,
                index=index,
            )
        )
    )
    mapping: dict[str, str] = {}
    for resource in main:
        rtype = resource["resourceType"]
        if rtype == "Patient":
            mapping[resource["_fullUrl"]] = f"Patient/{patient_id}"
        elif rtype == "Practitioner":
            mapping[resource["_fullUrl"]] = f"Practitioner/{attending.id}"
        else:
            resource["id"] = chart.new_id(rtype)
            mapping[resource["_fullUrl"]] = f"{rtype}/{resource['id']}"
    main = [_rewrite({k: v for k, v in r.items() if k != "_fullUrl"}, mapping) for r in main]

    patient = next(r for r in main if r["resourceType"] == "Patient")
    given, family = name
    patient.update(
        {
            "id": patient_id,
            "text": _narrative(
                f"{given} {family}, {patient['gender']}, born {patient['birthDate']}."
            ),
            "name": [{"use": "official", "family": family, "given": [given]}],
            "generalPractitioner": [_ref("Practitioner", attending.id, attending.display)],
        }
    )
    patient["identifier"] = [
        {
            "use": "usual",
            "type": _concept(
                "http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical record number"
            ),
            "system": MRN_SYSTEM,
            "value": f"SBX{100200 + index * 17:07d}",
        }
    ] + patient.get("identifier", [])
    patient["telecom"] = [{"system": "phone", "value": f"555-01{index % 100:02d}", "use": "home"}]
    patient["address"] = [
        {
            "use": "home",
            "line": [f"{10 + index} Example Street"],
            "city": "Springfield",
            "state": "IL",
            "postalCode": "62701",
            "country": "US",
        }
    ]
    chart.add(patient)
    chart.shared[f"Practitioner/{attending.id}"] = practitioner_resource(attending)
    birth = date.fromisoformat(patient["birthDate"])
    age = (REFERENCE_DATE - birth).days / 365.25

    main_encounter = next(r for r in main if r["resourceType"] == "Encounter")
    encounters = [main_encounter]
    for resource in main:
        # The patient was reshaped above; carebundle's practitioner is replaced by staff.
        if resource["resourceType"] in ("Patient", "Practitioner"):
            continue
        chart.add(resource)
        if resource["resourceType"] == "Encounter":
            resource["participant"] = [
                {"individual": _ref("Practitioner", attending.id, attending.display)}
            ]

    # --- history: earlier visits -------------------------------------------------------
    history = _carebundle_resources(
        to_json(
            generate_history(
                profile=carebundle_profile,
                seed=seed,
                sex=sex,
                age_range=age_range,
                reference_date=last_visit,
                index=index,
                visits=course.visits,
                interval_days=course.interval_days,
            )
        )
    )
    history_bp = [r for r in history if r["resourceType"] == "Observation"]
    main_obs = [r for r in main if r["resourceType"] == "Observation"]
    vitals = [o for o in main_obs if _is_category(o, "vital-signs") and _loinc(o) != _BP_CODE]
    main_bp = next((o for o in main_obs if _loinc(o) == _BP_CODE), None)
    reports = [r for r in main if r["resourceType"] == "DiagnosticReport"]
    by_ref = {f"Observation/{o['id']}": o for o in main_obs}
    trends = {**_TRENDS.get(carebundle_profile, {}), **_TRENDS.get(patient_id, {})}

    for back in range(1, course.visits):
        day = last_visit - timedelta(days=course.interval_days * back + rng.randrange(-6, 7))
        encounter = copy.deepcopy(main_encounter)
        encounter["id"] = chart.new_id("Encounter")
        encounter["period"] = {k: _with_time(v, day) for k, v in encounter["period"].items()}
        chart.add(encounter)
        encounters.append(encounter)
        enc_ref = f"Encounter/{encounter['id']}"

        def copy_observation(
            original: Resource, *, back: int = back, day: date = day, enc_ref: str = enc_ref
        ) -> Resource:
            observation = copy.deepcopy(original)
            observation["id"] = chart.new_id("Observation")
            observation["encounter"] = {"reference": enc_ref}
            for key in ("effectiveDateTime", "issued"):
                if key in observation:
                    observation[key] = _with_time(observation[key], day)
            code = _loinc(observation) or ""
            quantity = observation.get("valueQuantity")
            if isinstance(quantity, dict) and "value" in quantity and code not in _STABLE:
                drift = trends.get(code, 0.0) * back
                noise = rng.uniform(-0.04, 0.04)
                quantity["value"] = _scaled(quantity["value"], max(0.2, 1 + drift + noise))
                if code in _PERCENT_MAX:
                    quantity["value"] = min(quantity["value"], _PERCENT_MAX[code])
            return chart.add(observation)

        for vital in vitals:
            copy_observation(vital)
        # Blood pressure follows carebundle's treatment course (oldest visit first).
        course_index = course.visits - 1 - back
        if main_bp is not None:
            bp = copy_observation(main_bp)
            if 0 <= course_index < len(history_bp):
                for component, source in zip(
                    bp.get("component", []),
                    history_bp[course_index].get("component", []),
                    strict=False,
                ):
                    value = source["valueQuantity"]["value"] + rng.randint(-4, 4)
                    component["valueQuantity"]["value"] = int(value)
        for report in reports:
            panel = _PANEL_CODES.get(_loinc(report) or "")
            every = course.panel_every.get(panel or "", 0)
            if not every or back % every:
                continue
            new_report = copy.deepcopy(report)
            new_report["id"] = chart.new_id("DiagnosticReport")
            new_report["effectiveDateTime"] = _with_time(report["effectiveDateTime"], day)
            new_report["issued"] = _with_time(report["issued"], day)
            new_report["result"] = []
            for result in report.get("result", []):
                original = by_ref.get(result["reference"])
                if original is not None:
                    copied = copy_observation(original)
                    new_report["result"].append({"reference": f"Observation/{copied['id']}"})
            chart.add(new_report)

    # Observations and reports name the attending as performer.
    for resource in chart.resources:
        if resource["resourceType"] in ("Observation", "DiagnosticReport"):
            resource["performer"] = [_ref("Practitioner", attending.id, attending.display)]
    encounters.sort(key=lambda e: e["period"]["start"])

    # --- conditions ----------------------------------------------------------------------
    conditions = chart.of_type("Condition")
    first_visit = date.fromisoformat(encounters[0]["period"]["start"][:10])
    for condition in conditions:
        onset = _years_before(first_visit, rng.uniform(0.5, 8.0))
        condition["onsetDateTime"] = onset.isoformat()
        condition["recordedDate"] = (onset + timedelta(days=rng.randrange(0, 30))).isoformat()
        condition["encounter"] = {"reference": f"Encounter/{encounters[0]['id']}"}
    if patient_id == BENCH_PATIENT_ID:
        have = {c["code"]["coding"][0]["code"] for c in conditions}
        for code, display, status, onset_years, abated_years in _BENCH_CONDITIONS:
            if code in have:
                continue
            chart.add(
                _condition(
                    chart,
                    code,
                    display,
                    status,
                    last_visit,
                    onset_years,
                    abated_years,
                    encounters[0]["id"],
                )
            )
    elif index % 3 == 1:
        code, display, onset_years, abated_years = _RESOLVED_CONDITIONS[index % 3]
        chart.add(
            _condition(
                chart, code, display, "resolved", last_visit, onset_years, abated_years, None
            )
        )

    # Additions made after the first release of this population draw from their own
    # generator, so that every value drawn before stays what it was.
    extra = random.Random(f"{seed}:{index}:{patient_id}:additions")
    if profile == "healthy":
        code, display = _HEALTHY_PROBLEM
        chart.add(
            _condition(
                chart,
                code,
                display,
                "active",
                last_visit,
                round(extra.uniform(2.5, 8.0), 2),
                None,
                encounters[0]["id"],
            )
        )

    # --- medicines -----------------------------------------------------------------------
    requests = chart.of_type("MedicationRequest")
    active_codes = {r["medicationCodeableConcept"]["coding"][0]["code"] for r in requests}
    if patient_id == BENCH_PATIENT_ID:
        for med in _BENCH_ACTIVE:
            if med.code not in active_codes:
                requests.append(
                    chart.add(
                        _medication_request(
                            chart,
                            med,
                            "active",
                            None,
                            last_visit - timedelta(days=rng.randrange(30, 900)),
                            attending,
                            main_encounter["id"],
                        )
                    )
                )
                active_codes.add(med.code)
        past: tuple[tuple[Med, str, str, float], ...] = _BENCH_PAST
    else:
        past = tuple(p for p in _PAST_MEDS.get(profile, ()) if p[0].code not in active_codes)
    for request in requests:
        code = request["medicationCodeableConcept"]["coding"][0]["code"]
        request["dosageInstruction"] = [{"text": _DOSES.get(code, _DEFAULT_DOSE)}]
        request["requester"] = _ref("Practitioner", attending.id, attending.display)
        request["authoredOn"] = min(request["authoredOn"], last_visit.isoformat())
    for med, status, reason, years in past:
        chart.add(
            _medication_request(
                chart, med, status, reason, _years_before(last_visit, years), attending, None
            )
        )
    # Treatment for the problems the additions and the profiles give, where none is active.
    current = {
        r["medicationCodeableConcept"]["coding"][0]["code"]
        for r in chart.of_type("MedicationRequest")
        if r["status"] == "active"
    }
    new_meds = {"healthy": _HEALTHY_MED, "anaemia": _IRON}
    if profile in new_meds and new_meds[profile].code not in current:
        first_visit_day = date.fromisoformat(encounters[0]["period"]["start"][:10])
        started, encounter_id = (
            (last_visit, main_encounter["id"])  # iron restarted as haemoglobin falls
            if profile == "anaemia"
            else (first_visit_day, encounters[0]["id"])
        )
        chart.add(
            _medication_request(
                chart, new_meds[profile], "active", None, started, attending, encounter_id
            )
        )
    # Vary how the medicine is given: a code, a Medication resource, or a contained one.
    for position, request in enumerate(chart.of_type("MedicationRequest")):
        style = (index + position) % 3
        concept = request["medicationCodeableConcept"]
        code = concept["coding"][0]["code"]
        if style == 1:
            med_id = f"med-rxnorm-{code}"
            chart.shared[f"Medication/{med_id}"] = {
                "resourceType": "Medication",
                "id": med_id,
                "meta": _meta(),
                "code": concept,
                "status": "active",
            }
            del request["medicationCodeableConcept"]
            request["medicationReference"] = _ref("Medication", med_id, concept["text"])
        elif style == 2:
            request["contained"] = [
                {"resourceType": "Medication", "id": "med", "code": concept, "status": "active"}
            ]
            del request["medicationCodeableConcept"]
            request["medicationReference"] = {"reference": "#med", "display": concept["text"]}

    # --- allergies, procedures, immunizations -----------------------------------------
    if index % 3 == 0 or patient_id == BENCH_PATIENT_ID:
        count = 2 if patient_id == BENCH_PATIENT_ID else 1
        for offset in range(count):
            category, substance, reaction, criticality = _ALLERGENS[
                (index + offset) % len(_ALLERGENS)
            ]
            chart.add(
                _allergy(
                    chart,
                    category,
                    substance,
                    reaction,
                    criticality,
                    _years_before(last_visit, rng.uniform(2, 15)),
                )
            )
    if not chart.of_type("AllergyIntolerance"):
        code, display, text = _NO_KNOWN_ALLERGY[index % len(_NO_KNOWN_ALLERGY)]
        chart.add(
            _no_known_allergy(
                chart,
                code,
                display,
                text,
                date.fromisoformat(encounters[0]["period"]["start"][:10]),
            )
        )
    for system, code, display, who, years in _PROCEDURES:
        qualifies = {
            "age50": age >= 50,
            "female": sex == "F",
            "cardio": carebundle_profile in ("hypertension", "ckd_stage3")
            or patient_id == BENCH_PATIENT_ID,
            "diabetes": carebundle_profile == "type2_diabetes",
            "every5": index % 5 == 2,
            "every7": index % 7 == 3,
        }[who]
        if qualifies:
            performed = _years_before(last_visit, years * rng.uniform(0.8, 1.2))
            chart.add(_procedure(chart, system, code, display, performed, attending))
    for year in (last_visit.year - 1, last_visit.year - 2):
        chart.add(_immunization(chart, "flu", date(year, 10, 1 + rng.randrange(0, 28))))
    if index % 2 == 0:
        chart.add(_immunization(chart, "covid", date(2021, 4, 1 + rng.randrange(0, 28))))
    if index % 4 == 1:
        chart.add(_immunization(chart, "tdap", _years_before(last_visit, rng.uniform(1, 9))))
    if age >= 60 or patient_id == BENCH_PATIENT_ID:
        chart.add(_immunization(chart, "ppsv23", _years_before(last_visit, rng.uniform(1, 4))))
        chart.add(_immunization(chart, "zoster", _years_before(last_visit, rng.uniform(0.5, 3))))
    # This season's influenza vaccine, given at an autumn visit to two patients in three.
    if index % 3 != 2 and last_visit.month in (9, 10, 11, 12):
        chart.add(_immunization(chart, "flu_high_dose" if age >= 65 else "flu", last_visit))

    # --- existing notes ----------------------------------------------------------------
    note_count = 3 if patient_id == BENCH_PATIENT_ID else (1 if index % 2 == 0 else 0)
    for position in range(note_count):
        encounter = encounters[-2 - position] if len(encounters) > 1 + position else encounters[0]
        chart.add(_progress_note(chart, patient, encounter, attending, given))
    return chart


def _is_category(resource: Resource, code: str) -> bool:
    return any(
        c.get("code") == code for cat in resource.get("category", []) for c in cat.get("coding", [])
    )


def _condition(
    chart: _Chart,
    code: str,
    display: str,
    status: str,
    last_visit: date,
    onset_years: float,
    abated_years: float | None,
    encounter_id: str | None,
) -> Resource:
    onset = _years_before(last_visit, onset_years)
    condition: Resource = {
        "resourceType": "Condition",
        "id": chart.new_id("Condition"),
        "meta": _meta(),
        "clinicalStatus": _clinical_status(status, status.capitalize()),
        "verificationStatus": _concept(
            "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"
        ),
        "category": [
            _concept(
                "http://terminology.hl7.org/CodeSystem/condition-category",
                "problem-list-item",
                "Problem List Item",
            )
        ],
        "code": _concept(ICD10CM, code, display),
        "subject": _ref("Patient", chart.patient_id),
        "onsetDateTime": onset.isoformat(),
        "recordedDate": onset.isoformat(),
    }
    if encounter_id:
        condition["encounter"] = _ref("Encounter", encounter_id)
    if abated_years is not None:
        condition["abatementDateTime"] = _years_before(last_visit, abated_years).isoformat()
    return condition


def _medication_request(
    chart: _Chart,
    med: Med,
    status: str,
    reason: str | None,
    authored: date,
    prescriber: Clinician,
    encounter_id: str | None,
) -> Resource:
    request: Resource = {
        "resourceType": "MedicationRequest",
        "id": chart.new_id("MedicationRequest"),
        "meta": _meta(),
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": _concept(RXNORM, med.code, med.display),
        "subject": _ref("Patient", chart.patient_id),
        "authoredOn": authored.isoformat(),
        "requester": _ref("Practitioner", prescriber.id, prescriber.display),
        "dosageInstruction": [{"text": med.dose}],
    }
    if reason:
        request["statusReason"] = {"text": reason}
    if encounter_id:
        request["encounter"] = _ref("Encounter", encounter_id)
    return request


def _allergy(
    chart: _Chart,
    category: str,
    substance: cb.Code,
    reaction: tuple[str, str],
    criticality: str,
    recorded: date,
) -> Resource:
    return {
        "resourceType": "AllergyIntolerance",
        "id": chart.new_id("AllergyIntolerance"),
        "meta": _meta(),
        "clinicalStatus": _concept(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active", "Active"
        ),
        "verificationStatus": _concept(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
            "confirmed",
            "Confirmed",
        ),
        "type": "allergy",
        "category": [category],
        "criticality": criticality,
        "code": _concept(substance.system, substance.code, substance.display),
        "patient": _ref("Patient", chart.patient_id),
        "recordedDate": recorded.isoformat(),
        "reaction": [
            {
                "manifestation": [_concept(SNOMED, reaction[0], reaction[1])],
                "severity": "severe" if criticality == "high" else "mild",
            }
        ],
    }


def _no_known_allergy(
    chart: _Chart, code: str, display: str, text: str, recorded: date
) -> Resource:
    return {
        "resourceType": "AllergyIntolerance",
        "id": chart.new_id("AllergyIntolerance"),
        "meta": _meta(),
        "clinicalStatus": _concept(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active", "Active"
        ),
        "verificationStatus": _concept(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
            "confirmed",
            "Confirmed",
        ),
        "code": {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": text},
        "patient": _ref("Patient", chart.patient_id),
        "recordedDate": recorded.isoformat(),
    }


def _procedure(
    chart: _Chart, system: str, code: str, display: str, performed: date, performer: Clinician
) -> Resource:
    return {
        "resourceType": "Procedure",
        "id": chart.new_id("Procedure"),
        "meta": _meta(),
        "status": "completed",
        "code": _concept(system, code, display),
        "subject": _ref("Patient", chart.patient_id),
        "performedDateTime": performed.isoformat(),
        "recorder": _ref("Practitioner", performer.id, performer.display),
    }


def _immunization(chart: _Chart, vaccine: str, given: date) -> Resource:
    code, display = _VACCINES[vaccine]
    return {
        "resourceType": "Immunization",
        "id": chart.new_id("Immunization"),
        "meta": _meta(),
        "status": "completed",
        "vaccineCode": _concept(CVX, code, display),
        "patient": _ref("Patient", chart.patient_id),
        "occurrenceDateTime": given.isoformat(),
        "primarySource": True,
    }


def _display(resource: Resource) -> str:
    concept = resource.get("medicationCodeableConcept") or resource.get("code") or {}
    if concept:
        return str(concept.get("text") or concept.get("coding", [{}])[0].get("display", ""))
    return str(resource.get("medicationReference", {}).get("display", ""))


def _progress_note(
    chart: _Chart, patient: Resource, encounter: Resource, author: Clinician, given: str
) -> Resource:
    problems = [
        _display(c)
        for c in chart.of_type("Condition")
        if c["clinicalStatus"]["coding"][0]["code"] == "active"
    ][:5]
    medicines = [
        _display(m) for m in chart.of_type("MedicationRequest") if m["status"] == "active"
    ][:6]
    day = encounter["period"]["start"][:10]
    text = "\n".join(
        [
            f"PROGRESS NOTE — {day}",
            f"{given} was seen for a routine follow-up visit.",
            "Active problems: " + ("; ".join(problems) if problems else "none recorded") + ".",
            "Current medicines: " + ("; ".join(medicines) if medicines else "none") + ".",
            "Plan: continue current management; repeat laboratory tests before the next visit.",
            f"Signed: {author.display}, {author.suffix}",
        ]
    )
    return {
        "resourceType": "DocumentReference",
        "id": chart.new_id("DocumentReference"),
        "meta": _meta(),
        "status": "current",
        "docStatus": "final",
        "type": _concept(LOINC, "11506-3", "Progress note"),
        "category": [
            _concept(
                "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                "clinical-note",
                "Clinical Note",
            )
        ],
        "subject": _ref("Patient", chart.patient_id),
        "date": encounter["period"]["end"],
        "author": [_ref("Practitioner", author.id, author.display)],
        "description": "Progress note",
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "language": "en-US",
                    "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
                    "title": f"Progress note {day}",
                    "creation": encounter["period"]["end"],
                }
            }
        ],
        "context": {
            "encounter": [_ref("Encounter", encounter["id"])],
            "period": dict(encounter["period"]),
        },
    }


# -- the population -----------------------------------------------------------------------
def _names(count: int) -> list[tuple[str, str]]:
    names: list[tuple[str, str]] = []
    used: set[tuple[str, str]] = set()
    for index in range(count):
        given_pool = _GIVEN_F if index % 2 == 0 else _GIVEN_M
        for step in range(len(_FAMILY) * len(given_pool)):
            candidate = (
                given_pool[(index // 2 + step) % len(given_pool)],
                _FAMILY[(index * 7 + step) % len(_FAMILY)],
            )
            if candidate not in used:
                break
        used.add(candidate)
        names.append(candidate)
    return names


def patient_ids(count: int) -> list[str]:
    """The ids generate_population(count=count) gives its patients, in order."""
    regular = [f"pt-{n:02d}" for n in range(1, count)]
    return regular + [BENCH_PATIENT_ID] if count > 1 else [BENCH_PATIENT_ID]


def profile_of(index: int) -> str:
    return _PROFILE_CYCLE[index % len(_PROFILE_CYCLE)]


@lru_cache(maxsize=8)
def _population_json(count: int, seed: int) -> str:
    names = _names(count)
    bundles = []
    for index, patient_id in enumerate(patient_ids(count)):
        large = patient_id == BENCH_PATIENT_ID
        chart = _build_chart(
            index=index,
            seed=seed,
            patient_id=patient_id,
            profile="complex" if large else profile_of(index),
            sex="M" if large else ("F" if index % 2 == 0 else "M"),
            age_range=(68, 76) if large else (38, 82),
            name=("Harold", "Brennan-Okoye") if large else names[index],
        )
        entries = [{"resource": r} for r in chart.resources]
        entries += [{"resource": chart.shared[key]} for key in sorted(chart.shared)]
        bundles.append(
            {
                "resourceType": "Bundle",
                "id": f"chart-{patient_id}",
                "type": "collection",
                "entry": entries,
            }
        )
    return json.dumps(bundles, ensure_ascii=False)


def generate_population(*, count: int = 24, seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """One collection Bundle per patient (Patient first), deterministic for `seed`.

    The last patient is always the large benchmark chart, `bench-large`; the others are
    `pt-01`, `pt-02`, … cycling through carebundle's profiles. Every resource has an id
    and relative references; Practitioners and Medications a chart points at are
    included in it, so each Bundle stands alone.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    return list(json.loads(_population_json(count, seed)))


def all_resources(bundles: Iterable[dict[str, Any]]) -> Iterable[Resource]:
    for bundle in bundles:
        for entry in bundle.get("entry", []):
            yield entry["resource"]

"""The built-in rules' clinical tables: problem groups, lab codes and drug classes.

Small and documented on purpose: each entry is something a reviewer can check. Problems
match by SNOMED CT code, by ICD-10-CM code prefix, then by words in the text (for
problems coded in neither, or coded more specifically than the table lists). Drugs
match by RxNorm ingredient code (TTY=IN) when the EHR codes the ingredient, otherwise
by the ingredient's name as a whole word in the coding displays and text (EHRs usually
code the clinical drug, e.g. RxCUI 314076 "lisinopril 10 MG Oral Tablet", whose
ingredient needs RxNorm's relationships, not available offline).
LOINC: https://loinc.org · RxNorm: https://www.nlm.nih.gov/research/umls/rxnorm/
"""

from __future__ import annotations

from dataclasses import dataclass

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
UCUM = "http://unitsofmeasure.org"

# -- laboratory and vital-sign codes (LOINC) ----------------------------------------------

HBA1C = ("4548-4", "17856-6", "59261-8")
EGFR = ("33914-3", "62238-1", "98979-8", "48642-3", "48643-1", "88293-6", "88294-4")
CREATININE = ("2160-0", "38483-4", "14682-9", "59826-8")
HEMOGLOBIN = ("718-7",)
UACR = ("9318-7", "14959-1")
BP_PANEL = ("85354-9", "55284-4")
BP_SYSTOLIC = ("8480-6",)
BP_DIASTOLIC = ("8462-4",)
KIDNEY_FUNCTION = EGFR + CREATININE
LDL = ("13457-7", "18262-6", "2089-1")
TOTAL_CHOLESTEROL = ("2093-3",)
#: A lipid panel counts as done when either of these was measured (LDL preferred).
LIPIDS = LDL + TOTAL_CHOLESTEROL

# -- vaccines (CVX) -----------------------------------------------------------------------

#: Seasonal influenza vaccines: the VSAC "Influenza Vaccine" value set
#: (2.16.840.1.113883.3.526.3.1254, used by CMS147 and CMS117) plus the live intranasal
#: (111), unspecified nasal (151), older inactivated (15, 16) and quadrivalent pediatric
#: and multi-dose (200, 201, 202) codes. Vaccines coded otherwise are recognised by the
#: word "influenza" or "flu" in their text (not "influenzae": that is the Hib vaccine).
INFLUENZA_CVX: frozenset[str] = frozenset(
    {
        "15", "16", "88", "111", "135", "140", "141", "144", "149", "150", "151", "153",
        "155", "158", "161", "166", "168", "171", "185", "186", "197", "200", "201", "202",
        "205",
    }
)  # fmt: skip

#: Short names for results the rules talk about (the chart's own text for anything else).
LAB_NAMES: dict[str, str] = {
    **dict.fromkeys(HBA1C, "HbA1c"),
    **dict.fromkeys(EGFR, "eGFR"),
    **dict.fromkeys(CREATININE, "creatinine"),
    "718-7": "hemoglobin",
    "4544-3": "hematocrit",
    "789-8": "red cell count",
    "6690-2": "white cell count",
    "777-3": "platelets",
    "2951-2": "sodium",
    "2823-3": "potassium",
    "2075-0": "chloride",
    "2028-9": "bicarbonate",
    "17861-6": "calcium",
    "1751-7": "albumin",
    "3094-0": "urea nitrogen (BUN)",
    "2345-7": "glucose",
    "1558-6": "fasting glucose",
    "1742-6": "ALT",
    "1920-8": "AST",
    "6768-6": "alkaline phosphatase",
    "1975-2": "total bilirubin",
    "2093-3": "total cholesterol",
    "2085-9": "HDL cholesterol",
    "13457-7": "LDL cholesterol",
    "18262-6": "LDL cholesterol",
    "2089-1": "LDL cholesterol",
    "2571-8": "triglycerides",
    "9318-7": "urine albumin/creatinine ratio",
    "14959-1": "urine microalbumin/creatinine ratio",
    "14957-5": "urine microalbumin",
    "3016-3": "TSH",
    "33762-6": "NT-proBNP",
    "30934-4": "BNP",
    "42637-9": "BNP",
    "6301-6": "INR",
    "34714-6": "INR",
    "85354-9": "blood pressure",
    "55284-4": "blood pressure",
    "8480-6": "systolic blood pressure",
    "8462-4": "diastolic blood pressure",
    "8302-2": "height",
    "29463-7": "weight",
    "39156-5": "BMI",
    "8867-4": "heart rate",
    "9279-1": "respiratory rate",
    "8310-5": "temperature",
    "59408-5": "oxygen saturation",
    "2708-6": "oxygen saturation",
}

#: Results shown in the concise vitals and labs trend (any abnormal result is shown too),
#: in this order: vital signs first, then the labs chronic-disease care looks at.
KEY_RESULTS: tuple[str, ...] = (
    "85354-9",
    "8867-4",
    "29463-7",
    "39156-5",
    "59408-5",
    "8310-5",
    *HBA1C,
    *EGFR,
    *CREATININE,
    "2823-3",
    "2951-2",
    "718-7",
    "13457-7",
    "18262-6",
    "2089-1",
    "9318-7",
    "3016-3",
)


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


PROBLEM_GROUPS: tuple[ProblemGroup, ...] = (
    ProblemGroup(
        id="diabetes",
        lay="diabetes",
        snomed=frozenset({"44054006", "73211009", "46635009", "11530004"}),
        icd10=("E08", "E09", "E10", "E11", "E13"),
        words=("diabetes mellitus", "type 2 diabetes", "type 1 diabetes", "diabetic", "t2dm"),
        not_words=("insipidus", "prediabet", "pre-diabet", "without diabetes"),
        results=(HBA1C,),
        expects_treatment=True,
    ),
    ProblemGroup(
        id="hypertension",
        lay="high blood pressure",
        snomed=frozenset({"38341003", "59621000", "1201005"}),
        icd10=("I10", "I11", "I12", "I13", "I15", "I16"),
        words=("hypertension", "hypertensive", "high blood pressure"),
        not_words=("pulmonary", "ocular", "intracranial", "portal"),
        results=(BP_PANEL,),
        expects_treatment=True,
    ),
    ProblemGroup(
        id="ckd",
        lay="kidney disease",
        snomed=frozenset(
            {"709044004", "431855005", "431856006", "433144002", "431857002", "433146000"}
        ),
        # E1x.22: diabetes with diabetic CKD; I12/I13: hypertensive CKD.
        icd10=("N18", "E08.22", "E09.22", "E10.22", "E11.22", "E13.22", "I12", "I13"),
        words=("chronic kidney disease", "chronic renal", "ckd"),
        results=(EGFR, CREATININE),
    ),
    ProblemGroup(
        id="anemia",
        lay="anemia (a low blood count)",
        snomed=frozenset({"271737000", "87522002"}),
        icd10=tuple(f"D{n}" for n in (50, 51, 52, 53, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64)),
        words=("anemia", "anaemia"),
        results=(HEMOGLOBIN,),
    ),
    ProblemGroup(
        id="hyperlipidemia",
        lay="high cholesterol",
        snomed=frozenset({"55822004", "13644009", "370992007"}),
        icd10=("E78",),
        words=("hyperlipid", "dyslipid", "hypercholesterol", "hypertriglycerid"),
        expects_treatment=True,
    ),
    ProblemGroup(
        id="hypothyroidism",
        lay="an underactive thyroid",
        snomed=frozenset({"40930008"}),
        icd10=("E02", "E03", "E89.0"),
        words=("hypothyroid",),
        expects_treatment=True,
    ),
    ProblemGroup(
        id="heart_failure",
        lay="heart failure",
        snomed=frozenset({"84114007"}),
        icd10=("I50", "I11.0", "I13.0", "I13.2"),
        words=("heart failure",),
        expects_treatment=True,
    ),
    ProblemGroup(
        id="cad",
        lay="heart disease",
        snomed=frozenset({"53741008", "414545008"}),
        icd10=("I20", "I21", "I22", "I23", "I24", "I25"),
        words=("coronary", "angina", "ischemic heart", "atherosclerotic heart"),
    ),
    ProblemGroup(
        id="atrial_fibrillation",
        lay="an irregular heartbeat (atrial fibrillation)",
        snomed=frozenset({"49436004"}),
        icd10=("I48",),
        words=("atrial fibrillation",),
        expects_treatment=True,
    ),
    ProblemGroup(
        id="obesity",
        lay="weight",
        snomed=frozenset({"414916001"}),
        icd10=("E66",),
        words=("obesity",),
    ),
    ProblemGroup(
        id="gerd",
        lay="acid reflux",
        snomed=frozenset({"235595009"}),
        icd10=("K21",),
        words=("reflux",),
    ),
    ProblemGroup(
        id="depression",
        lay="depression",
        snomed=frozenset({"35489007", "370143000"}),
        icd10=("F32", "F33"),
        words=("depress",),
    ),
    ProblemGroup(
        id="anxiety",
        lay="anxiety",
        snomed=frozenset({"197480006"}),
        icd10=("F41",),
        words=("anxiety",),
    ),
    ProblemGroup(
        id="neuropathy",
        lay="nerve pain",
        snomed=frozenset({"302226006"}),
        icd10=("G62", "G63", "E08.4", "E09.4", "E10.4", "E11.4", "E13.4"),
        words=("neuropath",),
    ),
)

GROUPS_BY_ID = {g.id: g for g in PROBLEM_GROUPS}


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


_RAAS = frozenset({"hypertension", "heart_failure"})
_RAAS_ALSO = frozenset({"ckd", "cad", "diabetes"})

DRUG_CLASSES: tuple[DrugClass, ...] = (
    DrugClass(
        id="ace_inhibitor",
        label="ACE inhibitor",
        duplicate_group="renin-angiotensin blockers (ACE inhibitors and ARBs)",
        treats=_RAAS,
        also_for=_RAAS_ALSO,
        ingredients={
            "29046": "lisinopril",
            "3827": "enalapril",
            "35296": "ramipril",
            "18867": "benazepril",
            "1998": "captopril",
            "35208": "quinapril",
        },
    ),
    DrugClass(
        id="arb",
        label="angiotensin receptor blocker",
        duplicate_group="renin-angiotensin blockers (ACE inhibitors and ARBs)",
        treats=_RAAS,
        also_for=_RAAS_ALSO,
        ingredients={
            "52175": "losartan",
            "69749": "valsartan",
            "83818": "irbesartan",
            "321064": "olmesartan",
            "214354": "candesartan",
            "73494": "telmisartan",
        },
    ),
    DrugClass(
        id="calcium_channel_blocker",
        label="calcium channel blocker",
        duplicate_group="calcium channel blockers",
        treats=frozenset({"hypertension"}),
        also_for=frozenset({"cad", "atrial_fibrillation"}),
        ingredients={
            "17767": "amlodipine",
            "7417": "nifedipine",
            "4316": "felodipine",
            "3443": "diltiazem",
            "11170": "verapamil",
        },
    ),
    DrugClass(
        id="thiazide",
        label="thiazide diuretic",
        duplicate_group="thiazide diuretics",
        treats=frozenset({"hypertension", "heart_failure"}),
        ingredients={"5487": "hydrochlorothiazide", "2409": "chlorthalidone", "5764": "indapamide"},
    ),
    DrugClass(
        id="beta_blocker",
        label="beta blocker",
        duplicate_group="beta blockers",
        treats=frozenset({"hypertension", "heart_failure", "atrial_fibrillation"}),
        also_for=frozenset({"cad"}),
        ingredients={
            "6918": "metoprolol",
            "1202": "atenolol",
            "20352": "carvedilol",
            "19484": "bisoprolol",
            "8787": "propranolol",
            "31555": "nebivolol",
        },
    ),
    DrugClass(
        id="loop_diuretic",
        label="loop diuretic",
        duplicate_group="loop diuretics",
        treats=frozenset({"heart_failure"}),
        also_for=frozenset({"ckd", "hypertension"}),
        ingredients={"4603": "furosemide", "1808": "bumetanide", "38413": "torsemide"},
    ),
    DrugClass(
        id="mineralocorticoid_antagonist",
        label="mineralocorticoid receptor antagonist",
        duplicate_group="mineralocorticoid receptor antagonists",
        treats=frozenset({"heart_failure", "hypertension"}),
        ingredients={"9997": "spironolactone", "298869": "eplerenone"},
    ),
    DrugClass(
        id="statin",
        label="statin",
        duplicate_group="statins",
        treats=frozenset({"hyperlipidemia"}),
        # Guidelines give statins for these too, so a statin with them is not unmatched.
        also_for=frozenset({"cad", "diabetes", "ckd"}),
        ingredients={
            "83367": "atorvastatin",
            "36567": "simvastatin",
            "301542": "rosuvastatin",
            "42463": "pravastatin",
            "6472": "lovastatin",
            "861634": "pitavastatin",
        },
    ),
    DrugClass(
        id="cholesterol_absorption_inhibitor",
        label="cholesterol absorption inhibitor",
        duplicate_group="cholesterol absorption inhibitors",
        treats=frozenset({"hyperlipidemia"}),
        also_for=frozenset({"cad"}),
        ingredients={"341248": "ezetimibe"},
    ),
    DrugClass(
        id="biguanide",
        label="biguanide",
        duplicate_group="biguanides",
        treats=frozenset({"diabetes"}),
        ingredients={"6809": "metformin"},
    ),
    DrugClass(
        id="sulfonylurea",
        label="sulfonylurea",
        duplicate_group="sulfonylureas",
        treats=frozenset({"diabetes"}),
        ingredients={"4821": "glipizide", "25789": "glimepiride", "4815": "glyburide"},
    ),
    DrugClass(
        id="dpp4_inhibitor",
        label="DPP-4 inhibitor",
        duplicate_group="incretin-based drugs (DPP-4 inhibitors and GLP-1 agonists)",
        treats=frozenset({"diabetes"}),
        ingredients={"593411": "sitagliptin", "1100699": "linagliptin", "857974": "saxagliptin"},
    ),
    DrugClass(
        id="glp1_agonist",
        label="GLP-1 receptor agonist",
        duplicate_group="incretin-based drugs (DPP-4 inhibitors and GLP-1 agonists)",
        treats=frozenset({"diabetes"}),
        also_for=frozenset({"obesity"}),
        ingredients={"475968": "liraglutide", "1991302": "semaglutide", "1551291": "dulaglutide"},
    ),
    DrugClass(
        id="sglt2_inhibitor",
        label="SGLT2 inhibitor",
        duplicate_group="SGLT2 inhibitors",
        treats=frozenset({"diabetes"}),
        also_for=frozenset({"heart_failure", "ckd"}),
        ingredients={
            "1545653": "empagliflozin",
            "1488564": "dapagliflozin",
            "1373458": "canagliflozin",
        },
    ),
    DrugClass(
        id="thiazolidinedione",
        label="thiazolidinedione",
        duplicate_group="thiazolidinediones",
        treats=frozenset({"diabetes"}),
        ingredients={"33738": "pioglitazone"},
    ),
    DrugClass(
        id="insulin",
        label="insulin",
        duplicate_group="long-acting insulins",
        treats=frozenset({"diabetes"}),
        ingredients={
            "274783": "insulin glargine",
            "139825": "insulin detemir",
            "1670007": "insulin degludec",
        },
    ),
    DrugClass(
        id="thyroid_hormone",
        label="thyroid hormone",
        duplicate_group="thyroid hormones",
        treats=frozenset({"hypothyroidism"}),
        ingredients={"10582": "levothyroxine"},
    ),
    DrugClass(
        id="proton_pump_inhibitor",
        label="proton pump inhibitor",
        duplicate_group="proton pump inhibitors",
        treats=frozenset({"gerd"}),
        ingredients={
            "7646": "omeprazole",
            "40790": "pantoprazole",
            "283742": "esomeprazole",
            "17128": "lansoprazole",
        },
    ),
    DrugClass(
        id="ssri",
        label="SSRI antidepressant",
        duplicate_group="SSRI antidepressants",
        treats=frozenset({"depression", "anxiety"}),
        ingredients={
            "36437": "sertraline",
            "4493": "fluoxetine",
            "2556": "citalopram",
            "321988": "escitalopram",
        },
    ),
    DrugClass(
        id="gabapentinoid",
        label="gabapentinoid",
        duplicate_group="gabapentinoids",
        treats=frozenset({"neuropathy"}),
        ingredients={"25480": "gabapentin", "187832": "pregabalin"},
    ),
    DrugClass(
        id="antiplatelet",
        label="antiplatelet",
        duplicate_group="antiplatelets",
        treats=frozenset({"cad"}),
        ingredients={"1191": "aspirin", "32968": "clopidogrel"},
    ),
    DrugClass(
        id="anticoagulant",
        label="anticoagulant",
        duplicate_group="anticoagulants",
        treats=frozenset({"atrial_fibrillation"}),
        ingredients={
            "11289": "warfarin",
            "1364430": "apixaban",
            "1114195": "rivaroxaban",
            "1037042": "dabigatran",
        },
    ),
    DrugClass(
        id="iron",
        label="iron supplement",
        duplicate_group="iron supplements",
        treats=frozenset({"anemia"}),
        ingredients={"24947": "ferrous sulfate"},
    ),
)

#: Every ingredient name the tables know: the grounding verifier's list of drug names.
KNOWN_DRUG_NAMES: frozenset[str] = frozenset(
    name for cls in DRUG_CLASSES for name in cls.ingredients.values()
)

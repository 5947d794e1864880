"""The site configuration (TOML at `SMARTAPP_CONFIG`): what suggestions a site gets, and how.

Kinds enabled and their order, the engine per kind, templates and note style, the LLM's
model and pinned version, the grounding verifier's mode, care-gap thresholds, the
minimum grounding rate an engine needs for approval, phased rollout, and overrides per
site keyed by issuer. It is validated once, at start-up; every error names the file,
the line and the key (`site.toml line 12: kinds.care_gaps.engine: 'gpt' is not one of
builtin, llm`). `config/site.example.toml` documents every key. TOML: https://toml.io/en/v1.0.0
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from smartapp.notes.layout import (
    DEFAULT_LABELS,
    MAX_READING_GRADE,
    MIN_READING_GRADE,
    PARTS,
    AfterVisitSummary,
    DocumentType,
    NoteLayout,
    NoteSection,
    loinc_problem,
)
from smartapp.placement import placed_within
from smartapp.suggestions.kinds import KINDS
from smartapp.suggestions.templates import (
    DEFAULT_TEMPLATE_DIR,
    DETAILS,
    STYLES,
    TemplateSet,
    check_template,
)

ENGINES = ("builtin", "llm")
UNVERIFIED_MODES = ("drop", "mark")
CARE_GAP_RULES = (
    "hba1c_interval",
    "kidney_test_interval",
    "urine_albumin_interval",
    "bp_above_threshold",
    "bp_screening",
    "lipid_screening",
    "influenza_vaccine",
)
AUTH_HEADERS = ("authorization", "api-key")


def preventive_pack_ids() -> tuple[str, ...]:
    """The built-in preventive rule packs a site may list in `[care_gaps] packs`."""
    from smartapp import clinical

    ids = []
    for path in clinical.topic_files("preventive"):
        ids.append(str(clinical.read_toml(path).get("pack") or path.stem))
    return tuple(ids)


class SiteConfigError(Exception):
    """The site configuration is invalid; each line of the message names file, line and key."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = tuple(errors)


# -- the configuration, as the rest of the app sees it -----------------------------------


@dataclass(frozen=True, kw_only=True)
class KindConfig:
    """How one suggestion kind is produced and shown."""

    kind: str
    engine: str = "builtin"
    style: str = "bullets"
    detail: str = "concise"


@dataclass(frozen=True, kw_only=True)
class CareGapRules:
    """Thresholds of the built-in care-gap rules (`[care_gaps]`)."""

    rules: tuple[str, ...] = CARE_GAP_RULES
    hba1c_interval_months: int = 6
    kidney_test_interval_months: int = 12
    bp_systolic: int = 140
    bp_diastolic: int = 90
    bp_readings: int = 2
    urine_albumin_interval_months: int = 12
    bp_screening_interval_months: int = 12
    bp_screening_min_age: int = 18
    lipid_interval_months: int = 60
    lipid_min_age: int = 40
    lipid_max_age: int = 75
    influenza_interval_months: int = 12
    #: Preventive rule packs in effect (`smartapp/clinical/data/preventive/`); None: all.
    packs: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class LLMConfig:
    """The site's choice of model (`[llm]`); the endpoint and key come from the environment."""

    #: The model to ask for; overrides SMARTAPP_LLM_MODEL (governance approved this one).
    model: str | None = None
    #: The pinned model version recorded with every suggestion (`model@version`).
    version: str | None = None
    timeout_seconds: float = 20.0
    send_patient_name: bool = False
    #: "api-key" for Azure OpenAI, which wants `api-key: <key>` instead of a bearer token.
    auth_header: str = "authorization"
    #: Azure OpenAI's `api-version` query parameter.
    api_version: str | None = None
    temperature: float = 0.0
    max_observations_per_code: int = 3
    #: The largest answer read from the endpoint, in KiB; a larger one falls back to the rules.
    max_answer_kb: int = 2048
    #: The LLM service's CDS Hooks feedback endpoint: every decision on its suggestions is
    #: forwarded there (`{baseUrl}/cds-services/{id}/feedback`). Unset: nothing is sent.
    feedback_url: str | None = None


@dataclass(frozen=True, kw_only=True)
class RolloutRule:
    """Who sees a kind (issue 6): on or off, a share of clinicians, between two dates."""

    enabled: bool = True
    percent: int = 100
    start: date | None = None
    end: date | None = None

    def includes(self, fhir_user: str | None, *, site: str, kind: str, today: date) -> bool:
        """Whether this clinician is in the rollout today, placed by the app's one hash.

        `site` and `fhir_user` come normalised by the caller, as `smartapp.placement` wants.
        """
        if not self.enabled:
            return False
        if self.start is not None and today < self.start:
            return False
        if self.end is not None and today > self.end:
            return False
        if self.percent >= 100:
            return True
        if not fhir_user:
            return False
        return placed_within(site=site, kind=kind, fhir_user=fhir_user, share_bp=self.percent * 100)


@dataclass(frozen=True, kw_only=True)
class EffectiveConfig:
    """The configuration in force for one issuer: the defaults with its overrides merged."""

    issuer: str | None = None
    #: The enabled kinds, in the order the sidebar shows them.
    kinds: tuple[KindConfig, ...] = tuple(KindConfig(kind=k) for k in KINDS)
    unverified: str = "drop"
    templates: TemplateSet = field(default_factory=TemplateSet)
    care_gaps: CareGapRules = field(default_factory=CareGapRules)
    llm: LLMConfig = field(default_factory=LLMConfig)
    min_grounding_rate: float = 0.95
    #: Ask the clinician's one-tap pulse after at most 1 in this many saved notes (0: never).
    pulse_every: int = 5
    #: The IANA zone whose date names a visit when the launch has no encounter.
    visit_timezone: str = "UTC"
    #: The EHR family's quirks profile named for this issuer (None: detected).
    quirks: str | None = None
    #: kind → rollout rule; "all" is the default for kinds without their own.
    rollout: Mapping[str, RolloutRule] = field(default_factory=dict)
    #: The saved note's type and sections (`[note]`).
    note: NoteLayout = field(default_factory=NoteLayout)
    #: The patient's after-visit summary (`[after_visit_summary]`).
    after_visit_summary: AfterVisitSummary = field(default_factory=AfterVisitSummary)

    def kind(self, kind: str) -> KindConfig | None:
        for item in self.kinds:
            if item.kind == kind:
                return item
        return None

    @property
    def kind_ids(self) -> tuple[str, ...]:
        return tuple(k.kind for k in self.kinds)

    def rollout_for(self, kind: str) -> RolloutRule:
        return self.rollout.get(kind) or self.rollout.get("all") or RolloutRule()

    def engine_options(self, kind: str) -> dict[str, Any]:
        """The mapping an engine's `suggest(snapshot, kind, config)` receives."""
        kc = self.kind(kind) or KindConfig(kind=kind)
        return {
            "kind": kind,
            "style": kc.style,
            "detail": kc.detail,
            "care_gaps": self.care_gaps,
            # Patient instructions are written at the after-visit summary's reading grade.
            "reading_grade": self.after_visit_summary.reading_grade,
        }


@dataclass(frozen=True, kw_only=True)
class SiteConfig:
    source: Path | None = None
    default: EffectiveConfig = field(default_factory=EffectiveConfig)
    #: Normalised issuer → its effective configuration.
    sites: Mapping[str, EffectiveConfig] = field(default_factory=dict)

    def for_issuer(self, iss: str | None) -> EffectiveConfig:
        if iss:
            found = self.sites.get(normalize_issuer(iss))
            if found is not None:
                return found
        return self.default

    def all_effective(self) -> tuple[EffectiveConfig, ...]:
        return (self.default, *self.sites.values())


def normalize_issuer(url: str) -> str:
    """Issuers compare without a trailing slash, as in `smartapp.config`."""
    return url.strip().rstrip("/")


#: The default sampling of the clinician pulse: about one saved note in five.
DEFAULT_PULSE_EVERY = 5


# -- loading -------------------------------------------------------------------------------


def load_site_config(path: Path | None) -> SiteConfig:
    """The configuration at `path` (None: the built-in defaults), validated, or SiteConfigError."""
    if path is None:
        return SiteConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SiteConfigError([f"{path}: no such file"]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SiteConfigError([f"{path}: cannot be read ({type(exc).__name__})"]) from exc
    return parse_site_config(text, name=path.name, base_dir=path.parent, source=path)


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column \d+\)$")


def parse_site_config(
    text: str, *, name: str = "site.toml", base_dir: Path | None = None, source: Path | None = None
) -> SiteConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_POSITION.search(message)
        where = f" line {match.group(1)}" if match else ""
        raise SiteConfigError(
            [f"{name}{where}: not valid TOML ({_TOML_POSITION.sub('', message)})"]
        ) from exc
    checker = _Checker(name=name, lines=locate_keys(text), base_dir=base_dir or Path.cwd())
    return checker.site_config(data, source=source)


# -- validation ------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dotted(path: Sequence[str | int]) -> str:
    parts: list[str] = []
    for part in path:
        if isinstance(part, int):
            parts[-1] = f"{parts[-1]}[{part}]" if parts else f"[{part}]"
        elif _BARE_KEY.match(part):
            parts.append(part)
        else:
            parts.append('"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return ".".join(parts)


def _choices(options: Sequence[str]) -> str:
    return ", ".join(options)


class _Checker:
    """Validates the parsed TOML and builds the dataclasses, collecting errors with lines."""

    def __init__(self, *, name: str, lines: Mapping[tuple[str, ...], int], base_dir: Path) -> None:
        self.name = name
        self.lines = lines
        self.base_dir = base_dir
        self.errors: list[str] = []
        self.pending_templates: list[tuple[tuple[str, ...], str]] = []

    # Reporting -------------------------------------------------------------------------

    def error(self, path: Sequence[str | int], message: str) -> None:
        keys = tuple(p for p in path if isinstance(p, str))
        line = None
        for end in range(len(keys), 0, -1):
            line = self.lines.get(keys[:end])
            if line is not None:
                break
        where = f"{self.name} line {line}" if line is not None else self.name
        self.errors.append(f"{where}: {dotted(path)}: {message}" if path else f"{where}: {message}")

    def table(
        self, data: Any, path: tuple[str | int, ...], allowed: Sequence[str]
    ) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.error(path, f"must be a table, not {_toml_type(data)}")
            return {}
        for key in data:
            if key not in allowed:
                self.error((*path, key), f"unknown key (expected one of {_choices(allowed)})")
        return data

    def choice(
        self, data: Mapping[str, Any], path: tuple[str, ...], key: str, options: Sequence[str]
    ) -> str | None:
        if key not in data:
            return None
        value = data[key]
        if not isinstance(value, str) or value not in options:
            self.error((*path, key), f"{_show(value)} is not one of {_choices(options)}")
            return None
        return value

    def http_url(self, data: Mapping[str, Any], path: tuple[str, ...], key: str) -> str | None:
        value = self.string(data, path, key)
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            self.error((*path, key), f"{_show(value)} is not an http(s) URL")
            return None
        return value

    def string(self, data: Mapping[str, Any], path: tuple[str | int, ...], key: str) -> str | None:
        if key not in data:
            return None
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            self.error((*path, key), f"must be a non-empty string, not {_show(value)}")
            return None
        return value

    def boolean(self, data: Mapping[str, Any], path: tuple[str, ...], key: str) -> bool | None:
        if key not in data:
            return None
        value = data[key]
        if not isinstance(value, bool):
            self.error((*path, key), f"must be true or false, not {_show(value)}")
            return None
        return value

    def integer(
        self, data: Mapping[str, Any], path: tuple[str, ...], key: str, low: int, high: int
    ) -> int | None:
        if key not in data:
            return None
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.error(
                (*path, key), f"must be a whole number from {low} to {high}, not {_show(value)}"
            )
            return None
        return value

    def number(
        self,
        data: Mapping[str, Any],
        path: tuple[str, ...],
        key: str,
        low: float,
        high: float,
        *,
        low_open: bool = False,
    ) -> float | None:
        if key not in data:
            return None
        value = data[key]
        ok = (
            not isinstance(value, bool)
            and isinstance(value, int | float)
            and math.isfinite(value)
            and (low < value if low_open else low <= value)
            and value <= high
        )
        if not ok:
            bound = f"more than {low:g}" if low_open else f"from {low:g}"
            self.error((*path, key), f"must be a number {bound} to {high:g}, not {_show(value)}")
            return None
        return float(value)

    def day(self, data: Mapping[str, Any], path: tuple[str, ...], key: str) -> date | None:
        if key not in data:
            return None
        value = data[key]
        if isinstance(value, date) and not hasattr(value, "hour"):
            return value
        self.error((*path, key), f"must be a TOML date such as 2026-12-01, not {_show(value)}")
        return None

    def string_list(
        self, data: Mapping[str, Any], path: tuple[str, ...], key: str, options: Sequence[str]
    ) -> tuple[str, ...] | None:
        if key not in data:
            return None
        value = data[key]
        if not isinstance(value, list):
            self.error((*path, key), f"must be a list, not {_show(value)}")
            return None
        out: list[str] = []
        for index, item in enumerate(value):
            if not isinstance(item, str) or item not in options:
                self.error((*path, key, index), f"{_show(item)} is not one of {_choices(options)}")
            elif item in out:
                self.error((*path, key, index), f"{item!r} is listed twice")
            else:
                out.append(item)
        return tuple(out)

    # The schema -------------------------------------------------------------------------

    SECTIONS = (
        "suggestions",
        "kinds",
        "care_gaps",
        "llm",
        "governance",
        "rollout",
        "visits",
        "note",
        "after_visit_summary",
        "ehr",
    )

    def check_layer(self, data: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        """Validate one layer (the defaults, or one site's overrides) into plain overrides."""
        allowed = self.SECTIONS if path else (*self.SECTIONS, "sites")
        data = self.table(data, path, allowed)
        out: dict[str, Any] = {}
        values: dict[str, Any]

        if "suggestions" in data:
            p = (*path, "suggestions")
            section = self.table(
                data["suggestions"],
                p,
                ("kinds", "engine", "style", "detail", "unverified", "template_dir"),
            )
            values = {
                "kinds": self.string_list(section, p, "kinds", KINDS),
                "engine": self.choice(section, p, "engine", ENGINES),
                "style": self.choice(section, p, "style", STYLES),
                "detail": self.choice(section, p, "detail", DETAILS),
                "unverified": self.choice(section, p, "unverified", UNVERIFIED_MODES),
                "template_dir": self.directory(section, p, "template_dir"),
            }
            out["suggestions"] = {k: v for k, v in values.items() if v is not None}

        if "kinds" in data:
            p = (*path, "kinds")
            kinds = self.table(data["kinds"], p, KINDS)
            out["kinds"] = {}
            for kind, raw in kinds.items():
                if kind not in KINDS:
                    continue
                kp = (*p, kind)
                section = self.table(
                    raw, kp, ("engine", "style", "detail", "template", "template_inline")
                )
                values = {
                    "engine": self.choice(section, kp, "engine", ENGINES),
                    "style": self.choice(section, kp, "style", STYLES),
                    "detail": self.choice(section, kp, "detail", DETAILS),
                    "template": self.template_file(section, kp),
                    "template_inline": self.template_inline(section, kp, kind),
                }
                out["kinds"][kind] = {k: v for k, v in values.items() if v is not None}

        if "care_gaps" in data:
            p = (*path, "care_gaps")
            section = self.table(
                data["care_gaps"],
                p,
                (
                    "rules",
                    "hba1c_interval_months",
                    "kidney_test_interval_months",
                    "bp_systolic",
                    "bp_diastolic",
                    "bp_readings",
                    "urine_albumin_interval_months",
                    "bp_screening_interval_months",
                    "bp_screening_min_age",
                    "lipid_interval_months",
                    "lipid_min_age",
                    "lipid_max_age",
                    "influenza_interval_months",
                    "packs",
                ),
            )
            values = {
                "packs": self.string_list(section, p, "packs", preventive_pack_ids()),
                "rules": self.string_list(section, p, "rules", CARE_GAP_RULES),
                "hba1c_interval_months": self.integer(section, p, "hba1c_interval_months", 1, 60),
                "kidney_test_interval_months": self.integer(
                    section, p, "kidney_test_interval_months", 1, 60
                ),
                "bp_systolic": self.integer(section, p, "bp_systolic", 80, 250),
                "bp_diastolic": self.integer(section, p, "bp_diastolic", 40, 150),
                "bp_readings": self.integer(section, p, "bp_readings", 1, 5),
                "urine_albumin_interval_months": self.integer(
                    section, p, "urine_albumin_interval_months", 1, 60
                ),
                "bp_screening_interval_months": self.integer(
                    section, p, "bp_screening_interval_months", 1, 60
                ),
                "bp_screening_min_age": self.integer(section, p, "bp_screening_min_age", 0, 120),
                "lipid_interval_months": self.integer(section, p, "lipid_interval_months", 1, 120),
                "lipid_min_age": self.integer(section, p, "lipid_min_age", 0, 120),
                "lipid_max_age": self.integer(section, p, "lipid_max_age", 0, 120),
                "influenza_interval_months": self.integer(
                    section, p, "influenza_interval_months", 1, 24
                ),
            }
            out["care_gaps"] = {k: v for k, v in values.items() if v is not None}

        if "llm" in data:
            p = (*path, "llm")
            section = self.table(
                data["llm"],
                p,
                (
                    "model",
                    "version",
                    "timeout_seconds",
                    "send_patient_name",
                    "auth_header",
                    "api_version",
                    "temperature",
                    "max_observations_per_code",
                    "max_answer_kb",
                    "feedback_url",
                ),
            )
            values = {
                "model": self.string(section, p, "model"),
                "version": self.string(section, p, "version"),
                "timeout_seconds": self.number(
                    section, p, "timeout_seconds", 0, 600, low_open=True
                ),
                "send_patient_name": self.boolean(section, p, "send_patient_name"),
                "auth_header": self.choice(section, p, "auth_header", AUTH_HEADERS),
                "api_version": self.string(section, p, "api_version"),
                "temperature": self.number(section, p, "temperature", 0, 2),
                "max_observations_per_code": self.integer(
                    section, p, "max_observations_per_code", 1, 50
                ),
                "max_answer_kb": self.integer(section, p, "max_answer_kb", 1, 65536),
                "feedback_url": self.http_url(section, p, "feedback_url"),
            }
            out["llm"] = {k: v for k, v in values.items() if v is not None}

        if "governance" in data:
            p = (*path, "governance")
            section = self.table(data["governance"], p, ("min_grounding_rate", "pulse_every"))
            rate = self.number(section, p, "min_grounding_rate", 0, 1)
            every = self.integer(section, p, "pulse_every", 0, 1000)
            out["governance"] = {
                k: v
                for k, v in (("min_grounding_rate", rate), ("pulse_every", every))
                if v is not None
            }

        if "ehr" in data:
            from smartapp.quirks import catalog

            p = (*path, "ehr")
            section = self.table(data["ehr"], p, ("quirks",))
            chosen = self.choice(section, p, "quirks", tuple(catalog().profiles))
            if chosen is not None:
                out["ehr"] = {"quirks": chosen}

        if "visits" in data:
            p = (*path, "visits")
            section = self.table(data["visits"], p, ("timezone",))
            zone = self.string(section, p, "timezone")
            if zone is not None:
                if _known_zone(zone):
                    out["visits"] = {"timezone": zone}
                else:
                    self.error(
                        (*p, "timezone"),
                        f"{zone!r} is not an IANA time zone (e.g. 'America/Chicago', 'UTC')",
                    )

        if "rollout" in data:
            p = (*path, "rollout")
            targets = ("all", *KINDS)
            section = self.table(data["rollout"], p, targets)
            out["rollout"] = {}
            for target, raw in section.items():
                if target not in targets:
                    continue
                rp = (*p, target)
                rule = self.table(raw, rp, ("enabled", "percent", "start", "end"))
                values = {
                    "enabled": self.boolean(rule, rp, "enabled"),
                    "percent": self.integer(rule, rp, "percent", 0, 100),
                    "start": self.day(rule, rp, "start"),
                    "end": self.day(rule, rp, "end"),
                }
                values = {k: v for k, v in values.items() if v is not None}
                if values.get("start") and values.get("end") and values["end"] < values["start"]:
                    self.error((*rp, "end"), "is before start")
                out["rollout"][target] = values

        if "note" in data:
            p = (*path, "note")
            section = self.table(data["note"], p, ("type", "type_display", "sections", "labels"))
            values = {
                "type": self.document_type(section, p),
                "sections": self.note_sections(section, p),
            }
            if "labels" in section:
                labels = self.table(section["labels"], (*p, "labels"), PARTS)
                checked = {}
                for part, label in labels.items():
                    if part not in PARTS:
                        continue
                    if not isinstance(label, str):
                        self.error(
                            (*p, "labels", part),
                            f'must be a string ("" for no sub-heading), not {_show(label)}',
                        )
                        continue
                    checked[part] = label.strip()
                values["labels"] = checked
            out["note"] = {k: v for k, v in values.items() if v is not None}

        if "after_visit_summary" in data:
            p = (*path, "after_visit_summary")
            section = self.table(
                data["after_visit_summary"],
                p,
                ("offer", "type", "type_display", "title", "reading_grade"),
            )
            values = {
                "offer": self.boolean(section, p, "offer"),
                "type": self.document_type(section, p),
                "title": self.string(section, p, "title"),
                "reading_grade": self.integer(
                    section, p, "reading_grade", MIN_READING_GRADE, MAX_READING_GRADE
                ),
            }
            out["after_visit_summary"] = {k: v for k, v in values.items() if v is not None}
        return out

    def document_type(self, data: Mapping[str, Any], path: tuple[str, ...]) -> DocumentType | None:
        """`type` (a LOINC document code) with its `type_display`: DocumentReference.type."""
        code = self.string(data, path, "type")
        display = self.string(data, path, "type_display")
        if code is None:
            if display is not None:
                self.error((*path, "type_display"), "is given without type")
            return None
        problem = loinc_problem(code.strip())
        if problem:
            self.error((*path, "type"), problem)
            return None
        if display is None:
            self.error((*path, "type"), "needs type_display (the LOINC display) beside it")
            return None
        return DocumentType(code=code.strip(), display=display.strip())

    def note_sections(
        self, data: Mapping[str, Any], path: tuple[str, ...]
    ) -> tuple[NoteSection, ...] | None:
        """`[[note.sections]]`: a heading and its parts; every part placed exactly once."""
        if "sections" not in data:
            return None
        raw = data["sections"]
        p = (*path, "sections")
        if not isinstance(raw, list) or not raw:
            self.error(p, f"must be a non-empty list of [[note.sections]] tables, not {_show(raw)}")
            return None
        sections: list[NoteSection] = []
        placed: dict[str, str] = {}
        ok = True
        for index, item in enumerate(raw):
            sp: tuple[str | int, ...] = (*p, index)
            table = self.table(item, sp, ("heading", "parts"))
            heading = self.string(table, sp, "heading")
            if heading is None:
                if "heading" not in table:
                    self.error(sp, "needs a heading")
                ok = False
                continue
            heading = heading.strip()
            if any(s.heading.lower() == heading.lower() for s in sections):
                self.error((*sp, "heading"), f"{heading!r} is given twice")
                ok = False
            parts = table.get("parts", [])
            if not isinstance(parts, list):
                self.error((*sp, "parts"), f"must be a list, not {_show(parts)}")
                ok = False
                continue
            chosen: list[str] = []
            for pi, part in enumerate(parts):
                if part == "patient_instructions":
                    self.error(
                        (*sp, "parts", pi),
                        "patient instructions never go in the clinician's note: they are "
                        "saved as the after-visit summary ([after_visit_summary])",
                    )
                    ok = False
                elif not isinstance(part, str) or part not in PARTS:
                    self.error((*sp, "parts", pi), f"{_show(part)} is not one of {_choices(PARTS)}")
                    ok = False
                elif part in placed:
                    self.error(
                        (*sp, "parts", pi), f"{part!r} is already in section {placed[part]!r}"
                    )
                    ok = False
                else:
                    placed[part] = heading
                    chosen.append(part)
            sections.append(NoteSection(heading=heading, parts=tuple(chosen)))
        missing = [part for part in PARTS if part not in placed]
        if ok and missing:
            # A part in no section would drop what the clinician accepted from the note.
            self.error(p, f"every part must be in a section; missing: {_choices(missing)}")
            ok = False
        return tuple(sections) if ok else None

    def directory(self, data: Mapping[str, Any], path: tuple[str, ...], key: str) -> Path | None:
        raw = self.string(data, path, key)
        if raw is None:
            return None
        directory = (self.base_dir / raw).resolve()
        if not directory.is_dir():
            self.error(
                (*path, key), f"{raw!r} is not a folder (relative paths start at the config file)"
            )
            return None
        return directory

    def template_file(self, data: Mapping[str, Any], path: tuple[str, ...]) -> str | None:
        name = self.string(data, path, "template")
        if name is None:
            return None
        if "template_inline" in data:
            self.error((*path, "template"), "give either template or template_inline, not both")
            return None
        # Checked once every layer's template_dir is known (a site may name a file that
        # lives in the default layer's folder).
        self.pending_templates.append((path, name))
        return name

    def check_file(self, path: tuple[str, ...], directory: Path | None, name: str) -> None:
        for folder in (directory, DEFAULT_TEMPLATE_DIR):
            if folder is None:
                continue
            candidate = (folder / name).resolve()
            if candidate.is_relative_to(folder.resolve()) and candidate.is_file():
                problem = check_template(candidate.read_text(encoding="utf-8"), name)
                if problem:
                    self.error((*path, "template"), f"{name} {problem}")
                return
        where = (
            "the shipped templates"
            if directory is None
            else f"{directory} or the shipped templates"
        )
        self.error((*path, "template"), f"{name!r} not found in {where}")

    def template_inline(
        self, data: Mapping[str, Any], path: tuple[str, ...], kind: str
    ) -> str | None:
        if "template_inline" not in data:
            return None
        source = data["template_inline"]
        if not isinstance(source, str):
            self.error((*path, "template_inline"), f"must be a string, not {_show(source)}")
            return None
        problem = check_template(source, f"inline:{kind}")
        if problem:
            self.error((*path, "template_inline"), f"template {problem}")
            return None
        return source

    def check_age_ranges(
        self,
        layer: Mapping[str, Any],
        path: tuple[str, ...],
        *,
        own: Mapping[str, Any] | None = None,
    ) -> None:
        """lipid_min_age ≤ lipid_max_age once a site's values are merged with the defaults
        (reported at whichever of the two this layer sets)."""
        values = {**vars(CareGapRules()), **layer.get("care_gaps", {})}
        low, high = values["lipid_min_age"], values["lipid_max_age"]
        if low <= high:
            return
        given = (own if own is not None else layer).get("care_gaps", {})
        if "lipid_min_age" not in given and "lipid_max_age" not in given:
            return  # the layer below sets them: its error says so
        key = "lipid_min_age" if "lipid_min_age" in given else "lipid_max_age"
        self.error(
            (*path, "care_gaps", key),
            f"lipid_min_age ({low}) must not be more than lipid_max_age ({high})",
        )

    # Building ---------------------------------------------------------------------------

    def site_config(self, data: dict[str, Any], *, source: Path | None) -> SiteConfig:
        base = self.check_layer(data, ())
        base_dir = base.get("suggestions", {}).get("template_dir")
        sites_raw = data.get("sites", {})
        layers: dict[str, dict[str, Any]] = {}
        if "sites" in data:
            if not isinstance(sites_raw, dict):
                self.error(("sites",), f"must be a table, not {_toml_type(sites_raw)}")
                sites_raw = {}
            for issuer, raw in sites_raw.items():
                if not re.match(r"^https?://[^/\s]+", issuer):
                    self.error(
                        ("sites", issuer), "must be keyed by an http(s) FHIR base URL (the issuer)"
                    )
                    continue
                if normalize_issuer(issuer) in layers:
                    self.error(
                        ("sites", issuer),
                        "is given twice (issuers compare without a trailing slash)",
                    )
                    continue
                layers[normalize_issuer(issuer)] = self.check_layer(raw, ("sites", issuer))
        # Template files named before a template_dir was known resolve against the base one.
        for path, name in self.pending_templates:
            site_dir = None
            if path[0] == "sites":
                site_dir = (
                    layers.get(normalize_issuer(path[1]), {})
                    .get("suggestions", {})
                    .get("template_dir")
                )
            self.check_file(path, site_dir or base_dir, name)
        self.check_age_ranges(base, ())
        for issuer, layer in layers.items():
            site_path = ("sites", next(k for k in sites_raw if normalize_issuer(k) == issuer))
            self.check_age_ranges(_merge(base, layer), site_path, own=layer)
        if self.errors:
            raise SiteConfigError(self.errors)
        default = _effective(None, base)
        sites = {iss: _effective(iss, _merge(base, layer)) for iss, layer in layers.items()}
        return SiteConfig(source=source, default=default, sites=sites)


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; any other value (lists included) replaces the default."""
    merged: dict[str, Any] = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _effective(issuer: str | None, layer: Mapping[str, Any]) -> EffectiveConfig:
    suggestions = layer.get("suggestions", {})
    per_kind = layer.get("kinds", {})
    kinds = tuple(
        KindConfig(
            kind=kind,
            engine=per_kind.get(kind, {}).get("engine", suggestions.get("engine", "builtin")),
            style=per_kind.get(kind, {}).get("style", suggestions.get("style", "bullets")),
            detail=per_kind.get(kind, {}).get("detail", suggestions.get("detail", "concise")),
        )
        for kind in suggestions.get("kinds", KINDS)
    )
    templates = TemplateSet(
        directory=suggestions.get("template_dir"),
        inline={k: v["template_inline"] for k, v in per_kind.items() if "template_inline" in v},
        files={k: v["template"] for k, v in per_kind.items() if "template" in v},
    )
    governance = layer.get("governance", {})
    return EffectiveConfig(
        issuer=issuer,
        kinds=kinds,
        unverified=suggestions.get("unverified", "drop"),
        templates=templates,
        care_gaps=_build(CareGapRules, layer.get("care_gaps", {})),
        llm=_build(LLMConfig, layer.get("llm", {})),
        min_grounding_rate=governance.get("min_grounding_rate", 0.95),
        pulse_every=governance.get("pulse_every", DEFAULT_PULSE_EVERY),
        visit_timezone=layer.get("visits", {}).get("timezone", "UTC"),
        quirks=layer.get("ehr", {}).get("quirks"),
        rollout={k: _build(RolloutRule, v) for k, v in layer.get("rollout", {}).items()},
        note=_note_layout(layer.get("note", {})),
        after_visit_summary=_build(AfterVisitSummary, layer.get("after_visit_summary", {})),
    )


def _note_layout(values: Mapping[str, Any]) -> NoteLayout:
    defaults = NoteLayout()
    return NoteLayout(
        type=values.get("type", defaults.type),
        sections=values.get("sections", defaults.sections),
        labels={**DEFAULT_LABELS, **values.get("labels", {})},
    )


def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ValueError, ZoneInfoNotFoundError):
        return False
    return True


def _build(cls: Callable[..., Any], values: Mapping[str, Any]) -> Any:
    return cls(**dict(values))


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:60])
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return _toml_type(value)


# -- where each key is, for error messages ----------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*(.+?)\s*\]\]?\s*(?:#.*)?$")


def _split_key(text: str) -> tuple[list[str], str] | None:
    """Parse a dotted TOML key at the start of `text`; return (parts, rest) or None."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            return None
        if text[i] == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    buf.append(text[j + 1])
                    j += 2
                    continue
                buf.append(text[j])
                j += 1
            if j >= n:
                return None
            parts.append("".join(buf))
            i = j + 1
        elif text[i] == "'":
            j = text.find("'", i + 1)
            if j < 0:
                return None
            parts.append(text[i + 1 : j])
            i = j + 1
        else:
            match = re.match(r"[A-Za-z0-9_-]+", text[i:])
            if not match:
                return None
            parts.append(match.group(0))
            i += match.end()
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == ".":
            i += 1
            continue
        return parts, text[i:]


def _bracket_balance(value: str) -> int:
    """Open minus closed brackets in a value, ignoring strings and comments."""
    depth, i, n = 0, 0, len(value)
    while i < n:
        ch = value[i]
        if ch == "#":
            break
        if ch in "\"'":
            end = value.find(ch, i + 1)
            while ch == '"' and end > 0 and value[end - 1] == "\\":
                end = value.find(ch, end + 1)
            i = n if end < 0 else end + 1
            continue
        depth += ch in "[{"
        depth -= ch in "]}"
        i += 1
    return depth


def locate_keys(text: str) -> dict[tuple[str, ...], int]:
    """Map each table header and key path to its (1-based) line, for error messages."""
    found: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        number = index + 1
        index += 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        header = _HEADER.match(line)
        if header and stripped.startswith("["):
            parsed = _split_key(header.group(2))
            if parsed is not None and not parsed[1].strip():
                table = tuple(parsed[0])
                found.setdefault(table, number)
                continue
        parsed = _split_key(line)
        if parsed is None or not parsed[1].startswith("="):
            continue
        keys, rest = parsed
        found.setdefault((*table, *keys), number)
        value = rest[1:].strip()
        # Skip the continuation lines of multi-line strings and arrays: they hold no keys.
        for quote in ('"""', "'''"):
            if value.startswith(quote) and value.count(quote) == 1:
                while index < len(lines) and quote not in lines[index]:
                    index += 1
                index += 1
                break
        else:
            depth = _bracket_balance(value)
            while depth > 0 and index < len(lines):
                depth += _bracket_balance(lines[index])
                index += 1
    return found

"""The site configuration (TOML at `SMARTAPP_CONFIG`): what suggestions a site gets, and how.

Kinds enabled and their order, the engine per kind, templates and note style, the LLM's
model and pinned version, the grounding verifier's mode, care-gap thresholds, the
minimum grounding rate an engine needs for approval, phased rollout, and overrides per
site keyed by issuer. The file's shape is the pydantic models below, one per table; it is
validated once, at start-up, and every error names the file, the line and the key
(`site.toml line 12: kinds.care_gaps.engine: 'gpt' is not one of builtin, llm`).
`config/site.example.toml` documents every key. TOML: https://toml.io/en/v1.0.0
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from smartapp.kinds import ENABLED_KINDS, ENGINES, KINDS
from smartapp.note_layout import (
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
from smartapp.templating import (
    DEFAULT_TEMPLATE_DIR,
    DETAILS,
    STYLES,
    TemplateSet,
    check_template,
)

if TYPE_CHECKING:
    from smartapp.config import Settings

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

#: The default sampling of the clinician pulse: about one saved note in five.
DEFAULT_PULSE_EVERY = 5


@cache
def preventive_pack_ids() -> tuple[str, ...]:
    """The built-in preventive rule packs a site may list in `[care_gaps] packs`."""
    from smartapp import clinical

    ids = []
    for path in clinical.topic_files("preventive"):
        ids.append(str(clinical.read_toml(path).get("pack") or path.stem))
    return tuple(ids)


def quirks_profiles() -> tuple[str, ...]:
    from smartapp.quirks import catalog

    return tuple(catalog().profiles)


class SiteConfigError(Exception):
    """The site configuration is invalid; each line of the message names file, line and key."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = tuple(errors)


# -- the values: each type says what it accepts, and what is wrong in our words --------------

Path_ = tuple[str | int, ...]


def problem(message: str) -> PydanticCustomError:
    """An error in the site file's words (pydantic puts it at the key being validated)."""
    return PydanticCustomError("site", "{message}", {"message": message})


def problems(found: Sequence[tuple[Path_, str]], value: Any) -> ValidationError:
    """Several errors at once, each below the key being validated (pydantic prefixes them)."""
    return ValidationError.from_exception_data(
        "site",
        [InitErrorDetails(type=problem(message), loc=loc, input=value) for loc, message in found],
    )


def _choices(options: Sequence[str]) -> str:
    return ", ".join(options)


Options = Sequence[str] | Callable[[], Sequence[str]]


def _options(options: Options) -> Sequence[str]:
    return options() if callable(options) else options


def one_of(options: Options) -> PlainValidator:
    def check(value: Any) -> str:
        allowed = _options(options)
        if not isinstance(value, str) or value not in allowed:
            raise problem(f"{_show(value)} is not one of {_choices(allowed)}")
        return value

    return PlainValidator(check)


def unique_list(options: Options) -> PlainValidator:
    """A list of distinct names from `options`; each bad entry is reported at its index."""

    def check(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list | tuple):
            raise problem(f"must be a list, not {_show(value)}")
        allowed = _options(options)
        found: list[tuple[Path_, str]] = []
        out: list[str] = []
        for index, item in enumerate(value):
            if not isinstance(item, str) or item not in allowed:
                found.append(((index,), f"{_show(item)} is not one of {_choices(allowed)}"))
            elif item in out:
                found.append(((index,), f"{item!r} is listed twice"))
            else:
                out.append(item)
        if found:
            raise problems(found, value)
        return tuple(out)

    return PlainValidator(check)


def whole(low: int, high: int) -> PlainValidator:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise problem(f"must be a whole number from {low} to {high}, not {_show(value)}")
        return value

    return PlainValidator(check)


def number(low: float, high: float, *, low_open: bool = False) -> PlainValidator:
    def check(value: Any) -> float:
        ok = (
            not isinstance(value, bool)
            and isinstance(value, int | float)
            and math.isfinite(value)
            and (low < value if low_open else low <= value)
            and value <= high
        )
        if not ok:
            bound = f"more than {low:g}" if low_open else f"from {low:g}"
            raise problem(f"must be a number {bound} to {high:g}, not {_show(value)}")
        return float(value)

    return PlainValidator(check)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise problem(f"must be true or false, not {_show(value)}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise problem(f"must be a non-empty string, not {_show(value)}")
    return value


def _http_url(value: Any) -> str:
    url = _text(value)
    if not re.match(r"^https?://[^/\s]+", url):
        raise problem(f"{_show(url)} is not an http(s) URL")
    return url


def _day(value: Any) -> date:
    if isinstance(value, date) and not hasattr(value, "hour"):
        return value
    raise problem(f"must be a TOML date such as 2026-12-01, not {_show(value)}")


def _zone(value: Any) -> str:
    zone = _text(value)
    try:
        ZoneInfo(zone)
    except (ValueError, ZoneInfoNotFoundError):
        raise problem(
            f"{zone!r} is not an IANA time zone (e.g. 'America/Chicago', 'UTC')"
        ) from None
    return zone


def _directory(value: Any, info: ValidationInfo) -> Path:
    """A folder, relative to the config file; given as a Path, taken as it is."""
    if isinstance(value, Path):
        return value
    raw = _text(value)
    base = (info.context or {}).get("base_dir") or Path.cwd()
    directory = (Path(base) / raw).resolve()
    if not directory.is_dir():
        raise problem(f"{raw!r} is not a folder (relative paths start at the config file)")
    return directory


def _template_inline(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"must be a string, not {_show(value)}")
    found = check_template(value, "inline")
    if found:
        raise problem(f"template {found}")
    return value


def _label(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f'must be a string ("" for no sub-heading), not {_show(value)}')
    return value.strip()


Flag = Annotated[bool, PlainValidator(_flag)]
Text = Annotated[str, PlainValidator(_text)]
HTTPURL = Annotated[str, PlainValidator(_http_url)]
Day = Annotated[date, PlainValidator(_day)]
Zone = Annotated[str, PlainValidator(_zone)]
Folder = Annotated[Path, PlainValidator(_directory)]
Engine = Annotated[str, one_of(ENGINES)]
Style = Annotated[str, one_of(STYLES)]
Detail = Annotated[str, one_of(DETAILS)]


def keyed_by(options: Options) -> WrapValidator:
    """A table whose keys are names from `options`: an unknown key is reported, the others
    validated (all errors at once)."""

    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return _known_keys(value, _options(options), handler)

    return WrapValidator(check)


def _known_keys(value: Any, allowed: Sequence[str], handler: Callable[[Any], Any]) -> Any:
    if not isinstance(value, dict):
        raise problem(f"must be a table, not {_toml_type(value)}")
    found: list[tuple[Path_, str]] = [
        ((key,), f"unknown key (expected one of {_choices(allowed)})")
        for key in value
        if key not in allowed
    ]
    known = {k: v for k, v in value.items() if k in allowed}
    try:
        result = handler(known)
    except ValidationError as exc:
        if not found:
            raise
        raise ValidationError.from_exception_data(
            "site",
            [
                *(
                    InitErrorDetails(type=problem(m), loc=loc, input=value[loc[0]])
                    for loc, m in found
                ),
                *_details(exc),
            ],
        ) from None
    if found:
        raise problems(found, value)
    return result


def _details(exc: ValidationError) -> list[InitErrorDetails]:
    """Re-raise pydantic's own errors next to ours."""
    out: list[InitErrorDetails] = []
    for error in exc.errors():
        if error["type"] == "site":
            kind: Any = problem(str((error.get("ctx") or {})["message"]))
            out.append(InitErrorDetails(type=kind, loc=error["loc"], input=error["input"]))
        elif "ctx" in error:
            out.append(
                InitErrorDetails(
                    type=error["type"], loc=error["loc"], input=error["input"], ctx=error["ctx"]
                )
            )
        else:
            out.append(InitErrorDetails(type=error["type"], loc=error["loc"], input=error["input"]))
    return out


class Table(BaseModel):
    """A TOML table: its keys are the fields, in the order an unknown key's error lists them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="wrap")
    @classmethod
    def _keys(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if isinstance(value, cls):
            return value
        return _known_keys(value, tuple(cls.model_fields), handler)


# -- the file's tables ----------------------------------------------------------------------


class SuggestionsTable(Table):
    """`[suggestions]`: the kinds in the sidebar, in order, and how each is produced by default."""

    kinds: Annotated[tuple[str, ...], unique_list(KINDS)] = KINDS
    engine: Engine = "builtin"
    style: Style = "bullets"
    detail: Detail = "concise"
    unverified: Annotated[str, one_of(UNVERIFIED_MODES)] = "drop"
    template_dir: Folder | None = None


class KindTable(Table):
    """`[kinds.<kind>]`: one kind's engine, style and template."""

    engine: Engine | None = None
    style: Style | None = None
    detail: Detail | None = None
    template: Text | None = None
    template_inline: Annotated[str, PlainValidator(_template_inline)] | None = None

    @model_validator(mode="after")
    def _one_template(self) -> Self:
        if self.template is not None and self.template_inline is not None:
            raise problems(
                [(("template",), "give either template or template_inline, not both")], None
            )
        return self


class CareGapRules(Table):
    """Thresholds of the built-in care-gap rules (`[care_gaps]`)."""

    rules: Annotated[tuple[str, ...], unique_list(CARE_GAP_RULES)] = CARE_GAP_RULES
    hba1c_interval_months: Annotated[int, whole(1, 60)] = 6
    kidney_test_interval_months: Annotated[int, whole(1, 60)] = 12
    bp_systolic: Annotated[int, whole(80, 250)] = 140
    bp_diastolic: Annotated[int, whole(40, 150)] = 90
    bp_readings: Annotated[int, whole(1, 5)] = 2
    urine_albumin_interval_months: Annotated[int, whole(1, 60)] = 12
    bp_screening_interval_months: Annotated[int, whole(1, 60)] = 12
    bp_screening_min_age: Annotated[int, whole(0, 120)] = 18
    lipid_interval_months: Annotated[int, whole(1, 120)] = 60
    lipid_min_age: Annotated[int, whole(0, 120)] = 40
    lipid_max_age: Annotated[int, whole(0, 120)] = 75
    influenza_interval_months: Annotated[int, whole(1, 24)] = 12
    #: Preventive rule packs in effect (`smartapp/clinical/data/preventive/`); None: all.
    packs: Annotated[tuple[str, ...] | None, unique_list(preventive_pack_ids)] = None


class LLMConfig(Table):
    """The site's choice of model (`[llm]`); the endpoint and key come from the environment."""

    #: The model to ask for; overrides SMARTAPP_LLM_MODEL (governance approved this one).
    model: Text | None = None
    #: The pinned model version recorded with every suggestion (`model@version`).
    version: Text | None = None
    timeout_seconds: Annotated[float, number(0, 600, low_open=True)] = 20.0
    send_patient_name: Flag = False
    #: "api-key" for Azure OpenAI, which wants `api-key: <key>` instead of a bearer token.
    auth_header: Annotated[str, one_of(AUTH_HEADERS)] = "authorization"
    #: Azure OpenAI's `api-version` query parameter.
    api_version: Text | None = None
    temperature: Annotated[float, number(0, 2)] = 0.0
    max_observations_per_code: Annotated[int, whole(1, 50)] = 3
    #: The largest answer read from the endpoint, in KiB; a larger one falls back to the rules.
    max_answer_kb: Annotated[int, whole(1, 65536)] = 2048
    #: The LLM service's CDS Hooks feedback endpoint: every decision on its suggestions is
    #: forwarded there (`{baseUrl}/cds-services/{id}/feedback`). Unset: nothing is sent.
    feedback_url: HTTPURL | None = None


class GovernanceTable(Table):
    """`[governance]`: what an engine needs for approval; how often the pulse is asked."""

    min_grounding_rate: Annotated[float, number(0, 1)] = 0.95
    #: Ask the clinician's one-tap pulse after at most 1 in this many saved notes (0: never).
    pulse_every: Annotated[int, whole(0, 1000)] = DEFAULT_PULSE_EVERY


class RolloutRule(Table):
    """Who sees a kind (issue 6): on or off, a share of clinicians, between two dates."""

    enabled: Flag = True
    percent: Annotated[int, whole(0, 100)] = 100
    start: Day | None = None
    end: Day | None = None

    @model_validator(mode="after")
    def _dates_in_order(self) -> Self:
        if self.start is not None and self.end is not None and self.end < self.start:
            raise problems([(("end",), "is before start")], self.end)
        return self

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


class VisitsTable(Table):
    """`[visits]`: the IANA zone whose date names a visit when the launch has no encounter."""

    timezone: Zone = "UTC"


class EHRTable(Table):
    """`[ehr]`: the EHR family's quirks profile for this issuer (None: detected)."""

    quirks: Annotated[str, one_of(quirks_profiles)] | None = None


def _document_type(table: Any) -> DocumentType | None:
    """`type` (a LOINC document code) with its `type_display`: DocumentReference.type."""
    code, display = getattr(table, "type", None), getattr(table, "type_display", None)
    if code is None:
        if display is not None:
            raise problems([(("type_display",), "is given without type")], display)
        return None
    found = loinc_problem(code.strip())
    if found:
        raise problems([(("type",), found)], code)
    if display is None:
        raise problems([(("type",), "needs type_display (the LOINC display) beside it")], code)
    return DocumentType(code=code.strip(), display=display.strip())


def _sections(raw: Any) -> tuple[NoteSection, ...]:
    """`[[note.sections]]`: a heading and its parts; every part placed exactly once."""
    if not isinstance(raw, list) or not raw:
        raise problem(f"must be a non-empty list of [[note.sections]] tables, not {_show(raw)}")
    found: list[tuple[Path_, str]] = []
    sections: list[NoteSection] = []
    placed: dict[str, str] = {}
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            found.append(((index,), f"must be a table, not {_toml_type(item)}"))
            continue
        found += [
            ((index, key), "unknown key (expected one of heading, parts)")
            for key in item
            if key not in ("heading", "parts")
        ]
        if "heading" not in item:
            found.append(((index,), "needs a heading"))
            continue
        heading = item["heading"]
        if not isinstance(heading, str) or not heading.strip():
            found.append(((index, "heading"), f"must be a non-empty string, not {_show(heading)}"))
            continue
        heading = heading.strip()
        if any(s.heading.lower() == heading.lower() for s in sections):
            found.append(((index, "heading"), f"{heading!r} is given twice"))
        parts = item.get("parts", [])
        if not isinstance(parts, list):
            found.append(((index, "parts"), f"must be a list, not {_show(parts)}"))
            continue
        chosen: list[str] = []
        for pi, part in enumerate(parts):
            where: Path_ = (index, "parts", pi)
            if part == "patient_instructions":
                found.append(
                    (
                        where,
                        "patient instructions never go in the clinician's note: they are "
                        "saved as the after-visit summary ([after_visit_summary])",
                    )
                )
            elif not isinstance(part, str) or part not in PARTS:
                found.append((where, f"{_show(part)} is not one of {_choices(PARTS)}"))
            elif part in placed:
                found.append((where, f"{part!r} is already in section {placed[part]!r}"))
            else:
                placed[part] = heading
                chosen.append(part)
        sections.append(NoteSection(heading=heading, parts=tuple(chosen)))
    missing = [part for part in PARTS if part not in placed]
    if not found and missing:
        # A part in no section would drop what the clinician accepted from the note.
        found.append(((), f"every part must be in a section; missing: {_choices(missing)}"))
    if found:
        raise problems(found, raw)
    return tuple(sections)


class NoteTable(Table):
    """`[note]`: the saved note's LOINC type, its sections and their sub-headings."""

    type: Text | None = None
    type_display: Text | None = None
    sections: Annotated[tuple[NoteSection, ...], PlainValidator(_sections)] | None = None
    labels: Annotated[dict[str, Annotated[str, PlainValidator(_label)]], keyed_by(PARTS)] = {}

    @model_validator(mode="after")
    def _type(self) -> Self:
        _document_type(self)
        return self


class AfterVisitSummaryTable(Table):
    """`[after_visit_summary]`: the patient's own document, and its reading grade."""

    offer: Flag | None = None
    type: Text | None = None
    type_display: Text | None = None
    title: Text | None = None
    reading_grade: Annotated[int, whole(MIN_READING_GRADE, MAX_READING_GRADE)] | None = None

    @model_validator(mode="after")
    def _type(self) -> Self:
        _document_type(self)
        return self


class Layer(Table):
    """The defaults, or one site's overrides: only the keys given count (`model_fields_set`)."""

    suggestions: SuggestionsTable = SuggestionsTable()
    kinds: Annotated[dict[str, KindTable], keyed_by(KINDS)] = {}
    care_gaps: CareGapRules = CareGapRules()
    llm: LLMConfig = LLMConfig()
    governance: GovernanceTable = GovernanceTable()
    rollout: Annotated[dict[str, RolloutRule], keyed_by(("all", *KINDS))] = {}
    visits: VisitsTable = VisitsTable()
    note: NoteTable = NoteTable()
    after_visit_summary: AfterVisitSummaryTable = AfterVisitSummaryTable()
    ehr: EHRTable = EHRTable()


def _table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise problem(f"must be a table, not {_toml_type(value)}")
    return value


class SiteFile(Layer):
    """The whole file: the defaults, and `[sites."<issuer>"]` layers checked one by one."""

    sites: Annotated[dict[str, Any], PlainValidator(_table)] = {}


def given(table: BaseModel) -> dict[str, Any]:
    """The keys a layer sets, nested (tables merge key by key; other values replace)."""
    out: dict[str, Any] = {}
    for name in table.model_fields_set:
        value = getattr(table, name)
        if isinstance(value, BaseModel):
            out[name] = given(value)
        elif isinstance(value, dict):
            out[name] = {k: given(v) if isinstance(v, BaseModel) else v for k, v in value.items()}
        else:
            out[name] = value
    return out


# -- the configuration, as the rest of the app sees it -----------------------------------


@dataclass(frozen=True, kw_only=True)
class KindConfig:
    """How one suggestion kind is produced and shown."""

    kind: str
    engine: str = "builtin"
    style: str = "bullets"
    detail: str = "concise"


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
    pulse_every: int = DEFAULT_PULSE_EVERY
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

    def engine_options(self, kind: str, *, enabled: Iterable[str] | None = None) -> dict[str, Any]:
        """The mapping an engine's `suggest(snapshot, kind, config)` receives.

        `enabled` is every kind shown to this clinician on this request (default: the
        site's kinds): a kind left out (rolled out to 0 %, switched off, not in the file)
        lends its content to no other kind's draft (`ENABLED_KINDS`).
        """
        kc = self.kind(kind) or KindConfig(kind=kind)
        return {
            "kind": kind,
            ENABLED_KINDS: frozenset(self.kind_ids if enabled is None else enabled),
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


# -- loading -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Sources:
    """What a command is configured by: the environment (os.environ over `.env`) and the site
    file it names (`--config` first). `serve`, `worker`, `check`, `evaluate` and `draft`
    all get theirs from `read_sources`, so that one `.env` configures them alike."""

    environ: Mapping[str, str]
    site_path: Path | None

    def settings(self) -> Settings:
        """The app's validated settings (ConfigError naming the variable when one is bad)."""
        from smartapp.config import Settings

        return Settings.from_env(self.environ)

    def site(self) -> SiteConfig:
        """The site file, validated (SiteConfigError naming file, line and key), or the defaults."""
        return load_site_config(self.site_path)


def read_sources(
    *,
    config: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    dotenv_path: Path | None = None,
) -> Sources:
    """The one way every command reads its configuration: `environ` (default: os.environ
    over the working directory's `.env`, `smartapp.config.read_environment`) and the site
    file `config` or `SMARTAPP_CONFIG` names. A `--config` given also becomes the
    environment's SMARTAPP_CONFIG, so the settings built from it name the same file."""
    from smartapp.config import Environment, read_environment

    given = read_environment(dotenv_path) if environ is None else environ
    # A copy that keeps where each name came from (`Settings.source_of`).
    env = Environment(given, origins=given.origins if isinstance(given, Environment) else None)
    path = site_file_path(env, config)
    if config:
        env.put("SMARTAPP_CONFIG", str(path), origin="--config")
    return Sources(environ=env, site_path=path)


def site_file_path(environ: Mapping[str, str], override: str | Path | None = None) -> Path | None:
    """The site file every command reads: `--config` when given, else `SMARTAPP_CONFIG`
    from the environment `smartapp.config.read_environment` gives (None: the defaults).

    `read_sources` calls this; `Settings` reads SMARTAPP_CONFIG by the same rule.
    """
    chosen = override or environ.get("SMARTAPP_CONFIG") or None
    return Path(chosen) if chosen else None


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
    loader = _Loader(name=name, lines=locate_keys(text), base_dir=base_dir or Path.cwd())
    return loader.site_config(data, source=source)


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


def _message(error: Any) -> str:
    """Our words for one of pydantic's errors (ours carry their message already)."""
    kind, value = error["type"], error["input"]
    if kind == "site":
        return str(error["ctx"]["message"])
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a table, not {_toml_type(value)}"
    if kind in ("list_type", "tuple_type"):
        return f"must be a list, not {_show(value)}"
    return str(error["msg"])


class _Loader:
    """Validates each layer with the models, collecting every error with its line."""

    def __init__(self, *, name: str, lines: Mapping[tuple[str, ...], int], base_dir: Path) -> None:
        self.name = name
        self.lines = lines
        self.context = {"base_dir": base_dir}
        self.errors: list[str] = []

    def error(self, path: Sequence[str | int], message: str) -> None:
        keys = tuple(p for p in path if isinstance(p, str))
        line = None
        for end in range(len(keys), 0, -1):
            line = self.lines.get(keys[:end])
            if line is not None:
                break
        where = f"{self.name} line {line}" if line is not None else self.name
        self.errors.append(f"{where}: {dotted(path)}: {message}" if path else f"{where}: {message}")

    def layer(self, model: type[Layer], raw: Any, path: Path_) -> dict[str, Any]:
        """The keys the layer sets, validated; what does not validate is reported and left out."""
        try:
            return given(model.model_validate(raw, context=self.context))
        except ValidationError as exc:
            for error in exc.errors():
                self.error((*path, *error["loc"]), _message(error))
        # Keep the tables that are valid on their own: later checks (template files, age
        # ranges) still report their errors in the same run.
        valid: dict[str, Any] = {}
        for key, value in raw.items() if isinstance(raw, dict) else ():
            if key in Layer.model_fields:
                try:
                    valid |= given(Layer.model_validate({key: value}, context=self.context))
                except ValidationError:
                    continue
        return valid

    def template_files(self, raw: Any, path: Path_, directory: Path | None) -> None:
        """Each `[kinds.<kind>] template` file exists (in the site's folder or the shipped
        ones) and compiles; checked once every layer's template_dir is known."""
        kinds = raw.get("kinds") if isinstance(raw, dict) else None
        for kind, table in kinds.items() if isinstance(kinds, dict) else ():
            if kind not in KINDS or not isinstance(table, dict) or "template" not in table:
                continue
            keys = ("template", "template_inline")
            try:
                name = KindTable.model_validate({k: table[k] for k in keys if k in table}).template
            except ValidationError:
                continue  # reported with the layer
            if name is not None:
                self.template_file((*path, "kinds", kind, "template"), directory, name)

    def template_file(self, path: Path_, directory: Path | None, name: str) -> None:
        for folder in (directory, DEFAULT_TEMPLATE_DIR):
            if folder is None:
                continue
            candidate = (folder / name).resolve()
            if candidate.is_relative_to(folder.resolve()) and candidate.is_file():
                found = check_template(candidate.read_text(encoding="utf-8"), name)
                if found:
                    self.error(path, f"{name} {found}")
                return
        where = (
            "the shipped templates"
            if directory is None
            else f"{directory} or the shipped templates"
        )
        self.error(path, f"{name!r} not found in {where}")

    def age_ranges(self, merged: Mapping[str, Any], path: Path_, own: Mapping[str, Any]) -> None:
        """lipid_min_age ≤ lipid_max_age once a layer's values are merged with the defaults
        (reported at whichever of the two this layer sets)."""
        values = {**CareGapRules().model_dump(), **merged.get("care_gaps", {})}
        low, high = values["lipid_min_age"], values["lipid_max_age"]
        if low <= high:
            return
        mine = own.get("care_gaps", {})
        if "lipid_min_age" not in mine and "lipid_max_age" not in mine:
            return  # the layer below sets them: its error says so
        key = "lipid_min_age" if "lipid_min_age" in mine else "lipid_max_age"
        self.error(
            (*path, "care_gaps", key),
            f"lipid_min_age ({low}) must not be more than lipid_max_age ({high})",
        )

    def site_config(self, data: dict[str, Any], *, source: Path | None) -> SiteConfig:
        base = self.layer(SiteFile, data, ())
        sites_raw = base.pop("sites", {})
        layers: dict[str, tuple[str, Any, dict[str, Any]]] = {}
        for issuer, raw in sites_raw.items():
            if not re.match(r"^https?://[^/\s]+", issuer):
                self.error(
                    ("sites", issuer), "must be keyed by an http(s) FHIR base URL (the issuer)"
                )
                continue
            if normalize_issuer(issuer) in layers:
                self.error(
                    ("sites", issuer), "is given twice (issuers compare without a trailing slash)"
                )
                continue
            layers[normalize_issuer(issuer)] = (
                issuer,
                raw,
                self.layer(Layer, raw, ("sites", issuer)),
            )
        # A site may name a template file that lives in the default layer's folder.
        base_dir = base.get("suggestions", {}).get("template_dir")
        self.template_files(data, (), base_dir)
        for issuer, raw, layer in layers.values():
            site_dir = layer.get("suggestions", {}).get("template_dir")
            self.template_files(raw, ("sites", issuer), site_dir or base_dir)
        self.age_ranges(base, (), base)
        for issuer, _raw, layer in layers.values():
            self.age_ranges(_merge(base, layer), ("sites", issuer), layer)
        if self.errors:
            raise SiteConfigError(self.errors)
        default = _effective(None, base)
        sites = {
            iss: _effective(iss, _merge(base, layer)) for iss, (_i, _r, layer) in layers.items()
        }
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
    """The merged layer's values, already validated, as the app's configuration."""
    suggestions = SuggestionsTable.model_construct(**layer.get("suggestions", {}))
    per_kind: Mapping[str, Mapping[str, Any]] = layer.get("kinds", {})
    kinds = tuple(
        KindConfig(
            kind=kind,
            engine=per_kind.get(kind, {}).get("engine", suggestions.engine),
            style=per_kind.get(kind, {}).get("style", suggestions.style),
            detail=per_kind.get(kind, {}).get("detail", suggestions.detail),
        )
        for kind in suggestions.kinds
    )
    templates = TemplateSet(
        directory=suggestions.template_dir,
        inline={k: v["template_inline"] for k, v in per_kind.items() if "template_inline" in v},
        files={k: v["template"] for k, v in per_kind.items() if "template" in v},
    )
    governance = GovernanceTable.model_construct(**layer.get("governance", {}))
    note = layer.get("note", {})
    avs = layer.get("after_visit_summary", {})
    avs_type = _document_type(AfterVisitSummaryTable.model_construct(**avs))
    summary = AfterVisitSummary()
    return EffectiveConfig(
        issuer=issuer,
        kinds=kinds,
        unverified=suggestions.unverified,
        templates=templates,
        care_gaps=CareGapRules.model_construct(**layer.get("care_gaps", {})),
        llm=LLMConfig.model_construct(**layer.get("llm", {})),
        min_grounding_rate=governance.min_grounding_rate,
        pulse_every=governance.pulse_every,
        visit_timezone=VisitsTable.model_construct(**layer.get("visits", {})).timezone,
        quirks=EHRTable.model_construct(**layer.get("ehr", {})).quirks,
        rollout={k: RolloutRule.model_construct(**v) for k, v in layer.get("rollout", {}).items()},
        note=NoteLayout(
            type=_document_type(NoteTable.model_construct(**note)) or NoteLayout().type,
            sections=note.get("sections") or NoteLayout().sections,
            labels={**DEFAULT_LABELS, **note.get("labels", {})},
        ),
        after_visit_summary=AfterVisitSummary(
            offer=avs.get("offer", summary.offer),
            type=avs_type or summary.type,
            title=avs.get("title", summary.title),
            reading_grade=avs.get("reading_grade", summary.reading_grade),
        ),
    )


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

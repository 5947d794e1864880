"""Clinical knowledge as reviewed data files: value sets and rule tables, each entry cited.

Python here only loads and validates; what the rules know lives in TOML files under
`smartapp/clinical/data/` (one file per topic, `valuesets/*.toml` for value sets) that a
clinician can read and a site can extend with files of the same shape in its own folder.
The shape follows FHIR Clinical Reasoning in spirit: a value set names its codes (system,
code, display) and where they came from; a rule names its condition, what it says and a
citation (source, version, url). See `smartapp/clinical/README.md`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "data"

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"
NDC = "http://hl7.org/fhir/sid/ndc"
ATC = "http://www.whocc.no/atc"

#: Short names a data file may use for a code system, so the files stay readable.
SYSTEM_ALIASES: Mapping[str, str] = {
    "loinc": LOINC,
    "snomed": SNOMED,
    "rxnorm": RXNORM,
    "cvx": CVX,
    "icd10cm": ICD10CM,
    "ucum": UCUM,
    "ndc": NDC,
    "atc": ATC,
}
KNOWN_SYSTEMS = frozenset(SYSTEM_ALIASES.values())


class KnowledgeError(ValueError):
    """A clinical data file is malformed: names the file and the entry."""


@dataclass(frozen=True, kw_only=True)
class Source:
    """Where a rule or value set comes from: shown to clinicians beside what it produced."""

    source: str  # "USPSTF", "CDC", "KDIGO", "ONC high-priority DDI list"
    version: str  # "2021-05", "2024"
    url: str | None = None

    @property
    def label(self) -> str:
        return f"{self.source} {self.version}".strip()


@dataclass(frozen=True, kw_only=True)
class Code:
    system: str
    code: str
    display: str | None = None


@dataclass(frozen=True, kw_only=True)
class ValueSet:
    id: str
    title: str
    codes: tuple[Code, ...]
    #: Lower-case words or phrases that identify the concept in text-only coding.
    words: tuple[str, ...]
    cite: Source

    def code_keys(self, system: str | None = None) -> frozenset[str]:
        """`system|code` keys (or bare codes of one system)."""
        if system is None:
            return self._keys
        return self._codes_by_system.get(system, frozenset())

    # Worked out once per value set: the engines ask for them per observation and concept
    # (cached_property writes the instance's __dict__, which a frozen dataclass allows).
    @cached_property
    def _keys(self) -> frozenset[str]:
        return frozenset(f"{c.system}|{c.code}" for c in self.codes)

    @cached_property
    def _codes_by_system(self) -> dict[str, frozenset[str]]:
        by_system: dict[str, set[str]] = {}
        for c in self.codes:
            by_system.setdefault(c.system, set()).add(c.code)
        return {system: frozenset(codes) for system, codes in by_system.items()}

    def matches(self, concept: Mapping[str, Any] | None) -> bool:
        """True when a CodeableConcept carries one of the codes (or, uncoded, one of the words)."""
        if not concept:
            return False
        keys = self._keys
        for coding in concept.get("coding") or ():
            if (
                isinstance(coding, Mapping)
                and f"{coding.get('system')}|{coding.get('code')}" in keys
            ):
                return True
        if not self.words:
            return False
        return self._words_pattern.search(concept_words(concept)) is not None

    def matches_parts(self, parts: ConceptParts) -> bool:
        """`matches` for a concept read once with `concept_parts` (rules that try many value
        sets on the same resources read each concept once, not once per value set)."""
        keys, text = parts
        if not keys.isdisjoint(self._keys):
            return True
        return bool(self.words) and self._words_pattern.search(text) is not None

    @cached_property
    def _words_pattern(self) -> re.Pattern[str]:
        """Any of the words as a whole word or phrase: one search (the alternation backtracks
        to the next word where one fails its boundary, so it matches when any word does)."""
        words = "|".join(re.escape(w) for w in self.words)
        return re.compile(rf"(?<![a-z0-9])(?:{words})(?![a-z0-9])")


#: A CodeableConcept's `system|code` keys and its lower-cased text and displays.
ConceptParts = tuple[frozenset[str], str]


def concept_words(concept: Mapping[str, Any]) -> str:
    """The text and the codings' displays, lower-cased: what value sets' words match."""
    return " ".join(
        str(part)
        for part in (
            concept.get("text"),
            *(c.get("display") for c in concept.get("coding") or () if isinstance(c, Mapping)),
        )
        if part
    ).lower()


def concept_parts(concept: Mapping[str, Any] | None) -> ConceptParts | None:
    """What `ValueSet.matches_parts` reads of a concept; None for no concept (matches nothing)."""
    if not concept:
        return None
    keys = frozenset(
        f"{c.get('system')}|{c.get('code')}"
        for c in concept.get("coding") or ()
        if isinstance(c, Mapping)
    )
    return keys, concept_words(concept)


def system_uri(value: str, *, where: str) -> str:
    uri = SYSTEM_ALIASES.get(value, value)
    if uri not in KNOWN_SYSTEMS:
        raise KnowledgeError(f"{where}: unknown code system {value!r}")
    return uri


def source(data: Any, *, where: str) -> Source:
    """A `cite = {source, version, url}` table; every rule and value set must have one."""
    if not isinstance(data, Mapping) or not data.get("source") or not data.get("version"):
        raise KnowledgeError(f"{where}: needs cite = {{ source = …, version = … }}")
    url = data.get("url")
    return Source(
        source=str(data["source"]), version=str(data["version"]), url=str(url) if url else None
    )


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise KnowledgeError(f"{path}: {exc}") from exc


def topic_files(topic: str, extra_dirs: Sequence[Path] = ()) -> list[Path]:
    """The built-in `<topic>.toml` (or `<topic>/*.toml`) and any a site adds in its own folders."""
    files: list[Path] = []
    for folder in (DATA_DIR, *extra_dirs):
        single = folder / f"{topic}.toml"
        if single.is_file():
            files.append(single)
        many = folder / topic
        if many.is_dir():
            files.extend(sorted(many.glob("*.toml")))
    return files


def entries(
    topic: str, key: str, extra_dirs: Sequence[Path] = ()
) -> list[tuple[Path, dict[str, Any]]]:
    """Every `[[key]]` table of a topic's files, with the file it came from."""
    found: list[tuple[Path, dict[str, Any]]] = []
    for path in topic_files(topic, extra_dirs):
        data = read_toml(path)
        items = data.get(key, [])
        if not isinstance(items, list):
            raise KnowledgeError(f"{path}: {key} must be an array of tables ([[{key}]])")
        for item in items:
            if not isinstance(item, dict):
                raise KnowledgeError(f"{path}: every [[{key}]] must be a table")
            found.append((path, item))
    return found


def parse_value_set(item: Mapping[str, Any], *, where: str) -> ValueSet:
    vs_id = item.get("id")
    if not isinstance(vs_id, str) or not vs_id:
        raise KnowledgeError(f"{where}: a value set needs an id")
    where = f"{where} value set {vs_id!r}"
    codes = []
    for raw in item.get("codes", []):
        if not isinstance(raw, Mapping) or not raw.get("code") or not raw.get("system"):
            raise KnowledgeError(f"{where}: each code needs system and code")
        codes.append(
            Code(
                system=system_uri(str(raw["system"]), where=where),
                code=str(raw["code"]),
                display=str(raw["display"]) if raw.get("display") else None,
            )
        )
    words = tuple(str(w).lower() for w in item.get("words", []))
    if not codes and not words:
        raise KnowledgeError(f"{where}: empty value set (no codes, no words)")
    return ValueSet(
        id=vs_id,
        title=str(item.get("title") or vs_id),
        codes=tuple(codes),
        words=words,
        cite=source(item.get("cite"), where=where),
    )


@lru_cache(maxsize=8)
def _value_sets(extra_dirs: tuple[Path, ...]) -> dict[str, ValueSet]:
    sets: dict[str, ValueSet] = {}
    for path, item in entries("valuesets", "valueset", extra_dirs):
        value_set = parse_value_set(item, where=str(path))
        # A site file may extend a built-in value set: its codes and words are added.
        if value_set.id in sets:
            old = sets[value_set.id]
            value_set = ValueSet(
                id=old.id,
                title=old.title,
                codes=old.codes + value_set.codes,
                words=old.words + value_set.words,
                cite=old.cite,
            )
        sets[value_set.id] = value_set
    return sets


def value_sets(extra_dirs: Iterable[Path] = ()) -> dict[str, ValueSet]:
    """Every value set by id (built-in, then each site folder's additions)."""
    return _value_sets(tuple(extra_dirs))


def value_set(vs_id: str, extra_dirs: Iterable[Path] = ()) -> ValueSet:
    try:
        return value_sets(extra_dirs)[vs_id]
    except KeyError:
        raise KnowledgeError(f"no value set {vs_id!r} in {DATA_DIR / 'valuesets'}") from None

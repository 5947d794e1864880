"""Vendor quirks as data: what each EHR family does differently, and what the app does.

The profiles are `profiles.toml` beside this module, each difference citing the vendor's
documentation. A profile is chosen per issuer: named in the site file, else detected
from the CapabilityStatement's `software.name` / `publisher`, else "generic".
https://hl7.org/fhir/R4/capabilitystatement.html
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

PROFILES_FILE = Path(__file__).resolve().parent / "profiles.toml"

#: Each key and the values it takes (a type, or the allowed strings).
KEYS: Mapping[str, tuple[str, ...] | type] = {
    "sort": ("declared", "always", "never"),
    "include": ("declared", "never"),
    "required_search": dict,
    "refresh_rotates": bool,
    "access_token_seconds": int,
    "scope_version": ("v1", "v2"),
    "fhir_user_absolute": bool,
    "pkce_methods_listed": bool,
}


class QuirksError(ValueError):
    """profiles.toml is malformed: says where and what."""


@dataclass(frozen=True, kw_only=True)
class Quirk:
    key: str
    value: Any
    says: str
    app: str
    cite: str


@dataclass(frozen=True, kw_only=True)
class QuirksProfile:
    id: str
    title: str
    detect: tuple[str, ...] = ()
    quirks: tuple[Quirk, ...] = ()
    #: How it was chosen: "site file", "CapabilityStatement", or "default".
    chosen_by: str = "default"

    def value(self, key: str, default: Any = None) -> Any:
        for quirk in self.quirks:
            if quirk.key == key:
                return quirk.value
        return default

    @property
    def sort(self) -> str:
        return str(self.value("sort", "declared"))

    @property
    def include(self) -> str:
        return str(self.value("include", "declared"))

    def sort_newest(self, declared: bool) -> bool:
        """Whether to ask Observations `_sort=-date`, given what the statement declares."""
        return {"always": True, "never": False}.get(self.sort, declared)

    def use_include(self, declared: bool) -> bool:
        return declared and self.include != "never"

    def required_search(self) -> Mapping[str, tuple[str, ...]]:
        raw = self.value("required_search", {}) or {}
        return {str(k): tuple(str(p) for p in v) for k, v in raw.items()}


@dataclass(frozen=True)
class QuirksCatalog:
    profiles: Mapping[str, QuirksProfile] = field(default_factory=dict)

    def get(self, profile_id: str) -> QuirksProfile:
        try:
            return self.profiles[profile_id]
        except KeyError:
            raise QuirksError(
                f"unknown EHR quirks profile {profile_id!r}; known: {', '.join(self.profiles)}"
            ) from None

    def detect(self, capabilities: Mapping[str, Any] | None) -> QuirksProfile:
        """The profile whose detect words occur in the statement's software name or
        publisher; "generic" when none does (or there is no statement)."""
        software = (capabilities or {}).get("software")
        name = software.get("name") if isinstance(software, Mapping) else None
        publisher = (capabilities or {}).get("publisher")
        text = " ".join(t for t in (name, publisher) if isinstance(t, str)).lower()
        for profile in self.profiles.values():
            if text and any(word in text for word in profile.detect):
                return _chosen(profile, "CapabilityStatement")
        return self.profiles["generic"]

    def choose(
        self, *, configured: str | None, capabilities: Mapping[str, Any] | None
    ) -> QuirksProfile:
        """The site file's choice for the issuer if any, else what the statement says."""
        if configured:
            return _chosen(self.get(configured), "site file")
        return self.detect(capabilities)


def _chosen(profile: QuirksProfile, how: str) -> QuirksProfile:
    return QuirksProfile(
        id=profile.id,
        title=profile.title,
        detect=profile.detect,
        quirks=profile.quirks,
        chosen_by=how,
    )


def parse_profiles(data: Mapping[str, Any], *, source: str = "profiles.toml") -> QuirksCatalog:
    profiles: dict[str, QuirksProfile] = {}
    raw_profiles = data.get("profile")
    if not isinstance(raw_profiles, list) or not raw_profiles:
        raise QuirksError(f"{source}: no [[profile]]")
    for i, raw in enumerate(raw_profiles):
        where = f"{source}: profile[{i}]"
        pid, title = raw.get("id"), raw.get("title")
        if not isinstance(pid, str) or not pid or not isinstance(title, str) or not title:
            raise QuirksError(f"{where}: needs an id and a title")
        if pid in profiles:
            raise QuirksError(f"{where}: id {pid!r} is given twice")
        detect = raw.get("detect", [])
        if not isinstance(detect, list) or not all(isinstance(w, str) and w for w in detect):
            raise QuirksError(f"{where}: detect must be a list of words")
        quirks: list[Quirk] = []
        for j, q in enumerate(raw.get("quirk", [])):
            qwhere = f"{where}.quirk[{j}]"
            key = q.get("key")
            if key not in KEYS:
                raise QuirksError(f"{qwhere}: unknown key {key!r}; known: {', '.join(KEYS)}")
            _check_value(qwhere, key, q.get("value"))
            for text in ("says", "app", "cite"):
                if not isinstance(q.get(text), str) or not q[text].strip():
                    raise QuirksError(f"{qwhere}: {text} is missing")
            if not q["cite"].startswith("https://"):
                raise QuirksError(f"{qwhere}: cite must be the documentation's https URL")
            quirks.append(
                Quirk(key=key, value=q["value"], says=q["says"], app=q["app"], cite=q["cite"])
            )
        profiles[pid] = QuirksProfile(
            id=pid, title=title, detect=tuple(w.lower() for w in detect), quirks=tuple(quirks)
        )
    if "generic" not in profiles:
        raise QuirksError(f"{source}: a 'generic' profile is required")
    return QuirksCatalog(profiles)


def _check_value(where: str, key: str, value: Any) -> None:
    expected = KEYS[key]
    if isinstance(expected, tuple):
        if value not in expected:
            raise QuirksError(f"{where}: {key} must be one of {', '.join(expected)}")
    elif expected is int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise QuirksError(f"{where}: {key} must be a positive integer")
    elif expected is dict:
        if not isinstance(value, dict) or not all(
            isinstance(v, list) and all(isinstance(p, str) for p in v) for v in value.values()
        ):
            raise QuirksError(f"{where}: {key} must map resource types to parameter lists")
    elif not isinstance(value, expected):
        raise QuirksError(f"{where}: {key} must be a {expected.__name__}")


@cache
def catalog() -> QuirksCatalog:
    """The shipped profiles (read once per process)."""
    with PROFILES_FILE.open("rb") as handle:
        return parse_profiles(tomllib.load(handle))

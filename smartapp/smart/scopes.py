"""What the EHR granted: SMART v2 (`patient/Observation.rs`) and v1 (`.read`) scopes.

Servers may advertise v2 and grant v1, so both are read into one model of
(context, resource type, interactions c/r/u/d/s, optional granular query).
https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

INTERACTIONS = frozenset("cruds")

#: SMART v1 permissions in v2 letters: `.read` ≈ `.rs`, `.write` ≈ `.cud`, `.*` = all.
_V1_PERMISSIONS = {
    "read": frozenset("rs"),
    "write": frozenset("cud"),
    "*": INTERACTIONS,
}

_RESOURCE_SCOPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)"
    r"\.(?P<perm>[a-z*]+)(?:\?(?P<query>.+))?$"
)


@dataclass(frozen=True)
class ResourceScope:
    """One clinical-data scope, normalised to v2 interaction letters."""

    context: str  # "patient" | "user" | "system"
    resource_type: str  # a FHIR resource type, or "*"
    interactions: frozenset[str]
    query: str | None = None  # granular restriction, e.g. "category=…|laboratory"
    version: int = 2

    def grants(self, resource_type: str, interaction: str) -> bool:
        return self.resource_type in ("*", resource_type) and interaction in self.interactions

    @classmethod
    def parse(cls, scope: str) -> ResourceScope | None:
        match = _RESOURCE_SCOPE.match(scope)
        if not match:
            return None
        perm = match["perm"]
        if perm in _V1_PERMISSIONS:
            if match["query"]:  # v1 has no granular form
                return None
            interactions, version = _V1_PERMISSIONS[perm], 1
        else:
            # v2 letters are a subset of c r u d s (the spec asks for that order; we only
            # require no unknown or repeated letters, to be lenient with servers).
            if len(set(perm)) != len(perm) or not set(perm) <= INTERACTIONS:
                return None
            interactions, version = frozenset(perm), 2
        return cls(
            context=match["context"],
            resource_type=match["type"],
            interactions=interactions,
            query=match["query"],
            version=version,
        )


class GrantedScopes:
    """The scopes actually granted (the token response's `scope`, which may be less than asked)."""

    __slots__ = ("_raw", "_tokens", "_resource_scopes")

    def __init__(self, scope: str | None) -> None:
        self._raw = " ".join((scope or "").split())
        self._tokens = tuple(dict.fromkeys(self._raw.split()))
        parsed = (ResourceScope.parse(token) for token in self._tokens)
        self._resource_scopes = tuple(s for s in parsed if s is not None)

    def __str__(self) -> str:
        return self._raw

    def __repr__(self) -> str:
        return f"GrantedScopes({self._raw!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GrantedScopes):
            return NotImplemented
        return set(self._tokens) == set(other._tokens)

    def __hash__(self) -> int:
        return hash(frozenset(self._tokens))

    def __contains__(self, scope: object) -> bool:
        """Plain membership, for scopes such as `openid`, `fhirUser`, `offline_access`."""
        return isinstance(scope, str) and scope in self._tokens

    def __iter__(self) -> Iterator[str]:
        return iter(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def resource_scopes(self) -> tuple[ResourceScope, ...]:
        return self._resource_scopes

    def allows(self, resource_type: str, interaction: str) -> bool:
        """True when a scope grants `interaction` (one of c r u d s) on every `resource_type`.

        A granular scope (`patient/Observation.rs?category=…`) grants only part of a type,
        so it does not count here; see `granular_queries` for those.
        """
        _check_interaction(interaction)
        return any(
            s.query is None and s.grants(resource_type, interaction) for s in self._resource_scopes
        )

    def granular_queries(self, resource_type: str, interaction: str) -> tuple[str, ...]:
        """The query restrictions (`category=…|laboratory`) of granular scopes granting this.

        Empty when nothing granular applies. When `allows()` is False but this is not
        empty, the app may search `resource_type` with each of these restrictions.
        """
        _check_interaction(interaction)
        return tuple(
            dict.fromkeys(
                s.query
                for s in self._resource_scopes
                if s.query is not None and s.grants(resource_type, interaction)
            )
        )

    def readable_types(self) -> frozenset[str]:
        """Types the app may read or search, wholly or through a granular scope.

        Holds "*" when a wildcard scope (`patient/*.rs`, `patient/*.read`) was granted.
        """
        return frozenset(
            s.resource_type for s in self._resource_scopes if s.interactions & {"r", "s"}
        )

    def missing(self, requested: GrantedScopes) -> tuple[str, ...]:
        """Requested scopes that were not granted as such (for "what was not shared")."""
        return tuple(t for t in requested if t not in self._tokens)


def _check_interaction(interaction: str) -> None:
    if interaction not in INTERACTIONS:
        raise ValueError(f"interaction must be one of c r u d s, got {interaction!r}")

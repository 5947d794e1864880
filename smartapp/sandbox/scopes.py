"""SMART scopes: parsing v1 and v2 forms, granting requested ∩ registered, checking access.

https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

#: v2 permissions, in the order the spec requires them to be written.
PERMISSION_ORDER = "cruds"
_V1_PERMISSIONS = {
    "read": frozenset("rs"),
    "write": frozenset("cud"),
    "*": frozenset("cruds"),
}
_RESOURCE_SCOPE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)"
    r"\.(?P<perms>read|write|\*|c?r?u?d?s?)(?:\?(?P<query>.+))?$"
)
#: Scopes about identity, refresh and launch context, granted only when registered.
IDENTITY_SCOPES = frozenset({"openid", "fhirUser", "profile", "offline_access", "online_access"})
LAUNCH_CONTEXT_SCOPES = frozenset({"launch", "launch/patient", "launch/encounter"})


@dataclass(frozen=True)
class ResourceScope:
    """One `context/Type.perms[?query]` scope."""

    context: str
    resource_type: str
    permissions: frozenset[str]
    query: tuple[tuple[str, str], ...]
    v1: bool

    def covers(self, resource_type: str, permission: str) -> bool:
        return permission in self.permissions and self.resource_type in ("*", resource_type)

    def render(self) -> str:
        if self.v1:
            names = {v: k for k, v in _V1_PERMISSIONS.items()}
            perms = names[self.permissions]
        else:
            perms = "".join(p for p in PERMISSION_ORDER if p in self.permissions)
        text = f"{self.context}/{self.resource_type}.{perms}"
        if self.query:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.query)
        return text


def parse_resource_scope(scope: str) -> ResourceScope | None:
    """The parsed scope, or None when `scope` is not a (well-formed) resource scope."""
    match = _RESOURCE_SCOPE.match(scope)
    if match is None:
        return None
    perms_text = match["perms"]
    if perms_text in _V1_PERMISSIONS:
        permissions, v1 = _V1_PERMISSIONS[perms_text], True
    elif perms_text:
        permissions, v1 = frozenset(perms_text), False
    else:
        return None
    query = tuple(parse_qsl(match["query"] or "", keep_blank_values=False))
    return ResourceScope(match["context"], match["type"], permissions, query, v1)


def split(scope: str | None) -> list[str]:
    return [item for item in (scope or "").split() if item]


def as_v1(scopes: Iterable[str]) -> list[str]:
    """The same grant as a SMART v1 server writes it: `.read` for r/s, `.write` for c/u/d.

    v1 has no granular (`?category=`) form, so a granular scope becomes the whole type:
    broader than asked, as servers that only speak v1 grant it."""
    out: list[str] = []
    for scope in scopes:
        parsed = parse_resource_scope(scope)
        if parsed is None or parsed.v1:
            written = [scope]
        else:
            base = f"{parsed.context}/{parsed.resource_type}"
            written = []
            if parsed.permissions & frozenset("rs"):
                written.append(f"{base}.read")
            if parsed.permissions & frozenset("cud"):
                written.append(f"{base}.write")
        out.extend(s for s in written if s not in out)
    return out


def grant(requested: Iterable[str], registered: Iterable[str]) -> list[str]:
    """What the server grants: each requested scope, narrowed to what the client registered.

    Identity and refresh scopes need an exact registration (`offline_access` is dropped
    when the client did not register it). Launch-context scopes are granted to any client
    registered for launching at all. A resource scope keeps the permissions that some
    registered scope of the same context and type (or `*`) allows; when that is fewer
    than asked, the grant is written in v2 form with the permissions that remain.
    """
    registered = list(registered)
    registered_set = set(registered)
    launchable = any(s == "launch" or s.startswith("launch/") for s in registered)
    registered_resources = [r for r in map(parse_resource_scope, registered) if r is not None]
    granted: list[str] = []
    for scope in requested:
        if scope in granted:
            continue
        if scope in IDENTITY_SCOPES:
            if scope in registered_set:
                granted.append(scope)
            continue
        if scope in LAUNCH_CONTEXT_SCOPES:
            if scope in registered_set or launchable:
                granted.append(scope)
            continue
        wanted = parse_resource_scope(scope)
        if wanted is None:
            continue
        allowed: set[str] = set()
        for have in registered_resources:
            if have.context != wanted.context:
                continue
            if have.resource_type not in ("*", wanted.resource_type):
                continue
            if have.query and have.query != wanted.query:
                continue
            allowed |= have.permissions
        kept = wanted.permissions & allowed
        if not kept:
            continue
        if kept == wanted.permissions:
            granted.append(scope)
        else:
            narrowed = ResourceScope(
                wanted.context, wanted.resource_type, frozenset(kept), wanted.query, v1=False
            )
            granted.append(narrowed.render())
    return granted


@dataclass(frozen=True)
class Permission:
    """The answer to "may this token do X on type T", and under what restrictions."""

    allowed: bool
    #: Restricted to the token's patient compartment (only patient/ scopes matched).
    compartment: bool
    #: Each entry is one scope's query; a resource must match at least one. Empty: no filter.
    queries: tuple[tuple[tuple[str, str], ...], ...]


class Grant:
    """The scopes of one access token."""

    def __init__(self, scopes: Sequence[str]) -> None:
        self.scopes = tuple(scopes)
        self.resource_scopes = tuple(
            parsed for parsed in map(parse_resource_scope, scopes) if parsed is not None
        )

    def check(self, resource_type: str, permission: str) -> Permission:
        matching = [s for s in self.resource_scopes if s.covers(resource_type, permission)]
        if not matching:
            return Permission(False, True, ())
        compartment = all(s.context == "patient" for s in matching)
        if any(not s.query for s in matching):
            return Permission(True, compartment, ())
        return Permission(True, compartment, tuple(s.query for s in matching))

    def __contains__(self, scope: object) -> bool:
        return scope in self.scopes

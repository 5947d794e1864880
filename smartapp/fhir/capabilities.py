"""What a server's CapabilityStatement says it can do (batch, `_include`, `_sort`).

https://hl7.org/fhir/R4/capabilitystatement.html
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


def _server_rests(capabilities: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    rests = capabilities.get("rest")
    if not isinstance(rests, list):
        return
    for rest in rests:
        # A statement may describe a client side too; only the server side says what we can ask.
        if isinstance(rest, dict) and rest.get("mode", "server") == "server":
            yield rest


def _codes(items: Any) -> set[str]:
    if not isinstance(items, list):
        return set()
    return {i["code"] for i in items if isinstance(i, dict) and isinstance(i.get("code"), str)}


def supports_system_interaction(capabilities: Mapping[str, Any], code: str) -> bool:
    """True if `rest.interaction` lists `code` (`batch`, `transaction`, `search-system`, ...)."""
    return any(code in _codes(rest.get("interaction")) for rest in _server_rests(capabilities))


def supports_batch(capabilities: Mapping[str, Any]) -> bool:
    return supports_system_interaction(capabilities, "batch")


def supports_transaction(capabilities: Mapping[str, Any]) -> bool:
    return supports_system_interaction(capabilities, "transaction")


def resource_capability(
    capabilities: Mapping[str, Any], resource_type: str
) -> Mapping[str, Any] | None:
    """The `rest.resource` entry for a type, or None if the statement does not describe it."""
    for rest in _server_rests(capabilities):
        for resource in rest.get("resource") or []:
            if isinstance(resource, dict) and resource.get("type") == resource_type:
                return resource
    return None


def supports_interaction(capabilities: Mapping[str, Any], resource_type: str, code: str) -> bool:
    """True if the type's `interaction` lists `code` (`read`, `search-type`, `create`, ...)."""
    resource = resource_capability(capabilities, resource_type)
    return resource is not None and code in _codes(resource.get("interaction"))


def supports_include(capabilities: Mapping[str, Any], resource_type: str, include: str) -> bool:
    """True if `searchInclude` lists `include` (e.g. `MedicationRequest:medication`) or `*`."""
    resource = resource_capability(capabilities, resource_type)
    if resource is None:
        return False
    listed = resource.get("searchInclude")
    return isinstance(listed, list) and (include in listed or "*" in listed)


def _search_param_names(entry: Mapping[str, Any]) -> set[str]:
    params = entry.get("searchParam")
    if not isinstance(params, list):
        return set()
    return {p["name"] for p in params if isinstance(p, dict) and isinstance(p.get("name"), str)}


def supports_search_param(capabilities: Mapping[str, Any], resource_type: str, param: str) -> bool:
    """True if the statement lists `param` among the type's search parameters (a server
    may ignore an undeclared one and answer as if it had not been asked)."""
    resource = resource_capability(capabilities, resource_type)
    return resource is not None and param in _search_param_names(resource)


def supports_sort(capabilities: Mapping[str, Any], resource_type: str, param: str) -> bool:
    """True if the statement lists `_sort` (for the type or the whole server) and `param`
    as a search parameter of the type: then `_sort=-param` may be asked for.

    R4 lists `_sort` among the search result parameters a statement may declare
    (https://hl7.org/fhir/R4/search.html#sort); a server that does not declare it may
    still sort, but the app cannot count on it.
    """
    resource = resource_capability(capabilities, resource_type)
    if resource is None or param not in _search_param_names(resource):
        return False
    if "_sort" in _search_param_names(resource):
        return True
    return any("_sort" in _search_param_names(rest) for rest in _server_rests(capabilities))

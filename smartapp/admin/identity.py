"""The admin area's view of identity; the definitions live in `smartapp.identity`."""

from __future__ import annotations

from smartapp.identity import (
    TOKEN_ACTOR,
    admin_entries,
    bound_identity,
    is_person,
    normalize_fhir_user,
    unbound_entries,
)

__all__ = [
    "TOKEN_ACTOR",
    "admin_entries",
    "bound_identity",
    "is_person",
    "normalize_fhir_user",
    "unbound_entries",
]

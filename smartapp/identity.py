"""Who someone is: an (issuer, fhirUser) pair, everywhere (admins, audit, change control).

The same Practitioner id at another EHR is another person (issue 11, finding 1).
`fhirUser` may come relative ("Practitioner/1") or absolute ("https://ehr/fhir/Practitioner/1",
as Epic sends it): https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_USER_TYPES = ("Practitioner", "PractitionerRole", "Patient", "RelatedPerson", "Person")
_USER_REFERENCE = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?/?$"
)

#: The actor of calls made with the admin API token (it is no person).
TOKEN_ACTOR = "admin-api-token"


def bound_identity(iss: str | None, fhir_user: str | None) -> str | None:
    """A person as the audit trail and change control record them: "ISS|Type/id".

    The form of SMARTAPP_ADMIN_USERS entries, so an actor reads back as an admin entry.
    """
    user = normalize_fhir_user(fhir_user)
    if user is None:
        return None
    issuer = (iss or "").strip().rstrip("/")
    return f"{issuer}|{user}" if issuer else user


def is_person(actor: str | None) -> bool:
    """Whether an actor names a person signed in through an EHR (not the token, not nobody)."""
    return bool(actor) and actor != TOKEN_ACTOR and "|" in str(actor)


def normalize_fhir_user(reference: str | None) -> str | None:
    """`fhirUser` as a relative reference: Epic sends absolute URLs, others relative ones.

    "https://ehr/fhir/Practitioner/123", ".../Practitioner/123/_history/4" and
    "Practitioner/123" all give "Practitioner/123"; anything that is not a reference to a
    user resource gives None. The id_token's claim and every stored actor go through here.
    """
    if reference is None:
        return None
    text = str(reference).strip()
    match = _USER_REFERENCE.search(text)
    if not match or match["type"] not in _USER_TYPES:
        return None
    prefix = text[: match.start()]
    if prefix and not urlsplit(prefix).scheme:
        # "foo/Practitioner/1" is neither a relative reference nor an absolute URL.
        return None
    return f"{match['type']}/{match['id']}"


def admin_entries(
    entries: tuple[str, ...], allowed_issuers: tuple[str, ...]
) -> frozenset[tuple[str, str]]:
    """SMARTAPP_ADMIN_USERS as (issuer, "Type/id") pairs: an admin is bound to one EHR.

    An entry is "ISS|Practitioner/id", or an absolute fhirUser URL on an allowed issuer's
    base, or (only when exactly one issuer is allowed) a relative "Practitioner/id". Entries
    that name no allowed issuer match nobody: the same id at another EHR is another person.
    """
    issuers = tuple(i.strip().rstrip("/") for i in allowed_issuers)
    pairs: set[tuple[str, str]] = set()
    for entry in entries:
        text = entry.strip()
        if "|" in text:
            iss, _, user = text.partition("|")
            iss = iss.strip().rstrip("/")
            ref = normalize_fhir_user(user)
            if ref is not None and iss in issuers and "://" not in user:
                pairs.add((iss, ref))
            continue
        ref = normalize_fhir_user(text)
        if ref is None:
            continue
        if "://" in text:
            base = text.rstrip("/")[: -len(ref)].rstrip("/")
            if base in issuers:
                pairs.add((base, ref))
        elif len(issuers) == 1:
            pairs.add((issuers[0], ref))
    return frozenset(pairs)


def unbound_entries(entries: tuple[str, ...], allowed_issuers: tuple[str, ...]) -> list[str]:
    """The entries of SMARTAPP_ADMIN_USERS that bind to no allowed issuer (they are ignored)."""
    return [e for e in entries if not admin_entries((e,), allowed_issuers)]

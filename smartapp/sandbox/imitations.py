"""Switches that make the sandbox behave like one EHR family's server, for the tests.

The sandbox is a stranger to the app: these are its own descriptions of what real EHRs
do (issue 13; the vendors' documentation), not the app's quirks profiles. Each switch
is one behaviour; an imitation is a named set of them plus the CapabilityStatement's
software name and publisher, from which the app detects its profile.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Imitation:
    name: str
    software: str = "smartapp sandbox EHR"
    publisher: str = "smartapp sandbox EHR (synthetic data, not for clinical use)"
    #: Declare `_sort` in the CapabilityStatement and apply it; False: neither (ignored,
    #: and left out of the self link, as servers do with parameters they did not use).
    sort: bool = True
    #: Observation searches without `category` (or `code`) answer 400.
    observation_needs_category: bool = False
    #: A transaction's urn:uuid fullUrls replaced everywhere, identifiers included.
    rewrite_urn_uuids: bool = False
    #: Access-token lifetime in seconds (None: the sandbox's setting).
    access_token_lifetime: int | None = None
    #: False: a refresh returns no new refresh token; the one held stays valid.
    rotate_refresh_tokens: bool = True
    #: "v1": scopes granted as `.read`/`.write` whatever was asked, only permission-v1 listed.
    scope_version: str = "v2"
    #: False: the SMART configuration omits code_challenge_methods_supported.
    list_pkce_methods: bool = True


IMITATIONS: dict[str, Imitation] = {
    "generic": Imitation(name="generic"),
    "epic": Imitation(
        name="epic",
        software="Epic (sandbox imitation)",
        publisher="Epic Systems Corporation (imitated)",
        observation_needs_category=True,
    ),
    "oracle-health": Imitation(
        name="oracle-health",
        software="Cerner Millennium (sandbox imitation)",
        publisher="Oracle Health (imitated)",
        access_token_lifetime=570,
        rotate_refresh_tokens=False,
        scope_version="v1",
        rewrite_urn_uuids=True,
    ),
    "athena": Imitation(
        name="athena",
        software="athenaOne FHIR (sandbox imitation)",
        publisher="athenahealth (imitated)",
        sort=False,
        list_pkce_methods=False,
    ),
    "meditech": Imitation(
        name="meditech",
        software="MEDITECH Expanse (sandbox imitation)",
        publisher="MEDITECH (imitated)",
        sort=False,
        rewrite_urn_uuids=True,
    ),
}


def imitation(name: str) -> Imitation:
    try:
        return IMITATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown EHR imitation {name!r}; choose one of {', '.join(IMITATIONS)}"
        ) from None

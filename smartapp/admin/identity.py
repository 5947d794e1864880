"""How FHIR user references and issuers are compared across the admin area.

`fhirUser` may come relative ("Practitioner/1") or absolute ("https://ehr/fhir/Practitioner/1",
as Epic sends it): https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html
"""

from __future__ import annotations

_USER_TYPES = ("Practitioner", "PractitionerRole", "Patient", "RelatedPerson", "Person")


def normalize_fhir_user(reference: str | None) -> str | None:
    """The relative "Type/id" form of a fhirUser reference (absolute or relative), or None."""
    if reference is None:
        return None
    text = str(reference).strip()
    if not text:
        return None
    parts = [p for p in text.split("/") if p]
    # ".../Practitioner/1/_history/3" names the same user.
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2] in _USER_TYPES:
        return f"{parts[-2]}/{parts[-1]}"
    return text

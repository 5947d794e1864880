"""Model cards: each engine version with its ONC HTI-1 decision-support source attributes.

The attributes that describe an engine (developer, intended use, cautions, inputs used…)
are data in `source_attributes.toml`, copied onto each version when it is registered in
change control: a version's card shows its own copy, so a later edit of the file describes
later versions only. The ones that describe a version on this site's data (its status in
change control, its validation on local data from its stored `evaluate` run, its last
update) come from the engine registry. Exported as JSON and as FHIR Device resources (the
HL7 AI Transparency on FHIR way of describing an AI in a Provenance):
https://build.fhir.org/ig/HL7/aitransparency-ig/
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from smartapp.governance.attributes import ATTRIBUTES_FILE, ENTRY_FOR, engine_attributes, family
from smartapp.governance.models import EngineVersion
from smartapp.governance.registry import list_versions
from smartapp.suggestions.builtin import BUILTIN_INFO

__all__ = ["ATTRIBUTES_FILE", "as_fhir", "card_for", "engine_attributes", "model_cards"]

HTI1 = "https://www.ecfr.gov/current/title-45/subtitle-A/subchapter-D/part-170/subpart-C/section-170.315"

def local_validation(evaluation: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the stored `smartapp evaluate` run says about this version on local data."""
    if not evaluation:
        return {"status": "not yet evaluated on local data"}
    kinds = [
        {
            "kind": k.get("kind"),
            "patients": k.get("patients"),
            "coverage": k.get("coverage"),
            "grounding_rate": k.get("grounding_rate"),
            "dropped": k.get("dropped"),
        }
        for k in evaluation.get("kinds", [])
        if isinstance(k, Mapping)
    ]
    result: dict[str, Any] = {"status": "evaluated", "kinds": kinds}
    for key in ("sha256", "cohort", "ran_at"):
        if evaluation.get(key):
            result[key] = evaluation[key]
    return result


def _card(
    *, engine: str, version: str, status: str, model: str | None, row: EngineVersion | None
) -> dict[str, Any]:
    kept = row.source_attributes if row is not None else None
    # A version keeps the attributes it was registered with; the shipped rules (and a
    # version registered before they were kept) are described by the file as it is now.
    attributes = dict(kept) if kept else dict(engine_attributes()[family(engine)])
    if model:
        attributes["model"] = model
    attributes["validation_on_local_data"] = local_validation(row.evaluation if row else None)
    if row is not None:
        last = row.activated_at or row.approved_at or row.evaluated_at or row.proposed_at
        attributes["last_update"] = last.isoformat() if last else None
        attributes["kinds"] = list(row.kinds)
        attributes["site"] = row.site
    return {
        "engine": engine,
        "version": version,
        "status": status,
        "source_attributes": attributes,
        # "registration": the copy this version kept; "file": the attributes file as it is.
        "source_attributes_from": "registration" if kept else "file",
    }


def model_cards(session: Session) -> list[dict[str, Any]]:
    """Every engine version in change control, and the built-in rules this release ships."""
    rows = list_versions(session)
    cards = [
        _card(
            engine=row.engine_name, version=row.version, status=row.state, model=row.model, row=row
        )
        for row in rows
    ]
    shipped = any(
        family(r.engine_name) == "builtin-rules" and r.version == BUILTIN_INFO.version
        for r in rows
    )
    if not shipped:
        # The rules ship with the release and serve whenever no other version is active.
        cards.insert(
            0,
            _card(
                engine=BUILTIN_INFO.name,
                version=BUILTIN_INFO.version,
                status="shipped",
                model=None,
                row=None,
            ),
        )
    return cards


#: Change-control states, the one that serves first: the card a clinician is shown.
_STATUS_ORDER = ("active", "shipped", "approved", "evaluated", "proposed", "superseded")


def _serves(card: Mapping[str, Any], *, engine: str, version: str) -> bool:
    if ENTRY_FOR.get(card["engine"], card["engine"]) != ENTRY_FOR.get(engine, engine):
        return False
    model = card["source_attributes"].get("model")
    # An LLM's suggestions carry "model@version"; its registry row keeps the two apart.
    return version in (card["version"], f"{model}@{card['version']}")


def card_for(session: Session, *, engine: str, version: str) -> dict[str, Any]:
    """The card of the engine version that drafted a suggestion (its name and version).

    A version not in change control (an LLM the site file names, never proposed) still
    gets its engine family's source attributes, with status "not in change control".
    """
    matches = [c for c in model_cards(session) if _serves(c, engine=engine, version=version)]
    if matches:
        rank = {status: n for n, status in enumerate(_STATUS_ORDER)}
        return min(matches, key=lambda c: rank.get(c["status"], len(rank)))
    return _card(
        engine=engine, version=version, status="not in change control", model=None, row=None
    )


def as_fhir(cards: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The cards as a FHIR collection Bundle of Device resources, one per engine version."""
    entries = []
    for n, card in enumerate(cards):
        properties = [
            {"type": {"text": name}, "valueCode": [{"text": _text(value)}]}
            for name, value in card["source_attributes"].items()
        ]
        device = {
            "resourceType": "Device",
            "id": f"engine-{n}",
            "status": "active" if card["status"] in ("active", "shipped") else "inactive",
            "deviceName": [{"name": card["engine"], "type": "model-name"}],
            "version": [{"value": card["version"]}],
            "type": {"text": "Clinical documentation decision support intervention"},
            "property": properties,
            "note": [{"text": f"Source attributes per ONC HTI-1: {HTI1}"}],
        }
        entries.append({"fullUrl": f"urn:uuid:engine-{n}", "resource": device})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping | list):
        return json.dumps(value, sort_keys=True)
    return str(value)

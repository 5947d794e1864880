"""Model cards: each engine version with its ONC HTI-1 decision-support source attributes.

The attributes that describe an engine (developer, intended use, cautions, inputs used…)
are data in `source_attributes.toml`; the ones that describe a version on this site's data
(its status in change control, its validation on local data, its last update) come from
the engine registry. Exported as JSON and as FHIR Device resources (the HL7 AI Transparency
on FHIR way of describing an AI in a Provenance):
https://build.fhir.org/ig/HL7/aitransparency-ig/
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from smartapp.governance.models import EngineVersion
from smartapp.governance.registry import list_versions
from smartapp.suggestions.builtin import BUILTIN_INFO

ATTRIBUTES_FILE = Path(__file__).with_name("source_attributes.toml")
HTI1 = "https://www.ecfr.gov/current/title-45/subtitle-A/subchapter-D/part-170/subpart-C/section-170.315"

#: The registry's engine names and the attribute entries that describe them.
_ENTRY_FOR = {"builtin": "builtin-rules", "builtin-rules": "builtin-rules", "llm": "llm"}


@lru_cache(maxsize=1)
def engine_attributes() -> Mapping[str, Mapping[str, Any]]:
    """The source attributes per engine family, from the reviewed data file."""
    with ATTRIBUTES_FILE.open("rb") as handle:
        data = tomllib.load(handle)
    engines = data.get("engine")
    if not isinstance(engines, dict) or set(engines) != {"builtin-rules", "llm"}:
        raise ValueError(f"{ATTRIBUTES_FILE}: needs [engine.builtin-rules] and [engine.llm]")
    return engines


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
    attributes = dict(engine_attributes()[_ENTRY_FOR.get(engine, "llm")])
    if model:
        attributes["model"] = model
    attributes["validation_on_local_data"] = local_validation(row.evaluation if row else None)
    if row is not None:
        last = row.activated_at or row.approved_at or row.evaluated_at or row.proposed_at
        attributes["last_update"] = last.isoformat() if last else None
        attributes["kinds"] = list(row.kinds)
        attributes["site"] = row.site
    return {"engine": engine, "version": version, "status": status, "source_attributes": attributes}


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
        _ENTRY_FOR.get(r.engine_name) == "builtin-rules" and r.version == BUILTIN_INFO.version
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
    if _ENTRY_FOR.get(card["engine"], card["engine"]) != _ENTRY_FOR.get(engine, engine):
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

"""The sandbox EHR as a CDS Hooks 2.0 client: it calls `patient-view` when a chart opens.

https://cds-hooks.hl7.org/2.0/ — discovery, prefetch filled from the EHR's own store,
a request JWT signed with the EHR's own key (ES384; public keys at `/cds/jwks.json`),
and the cards shown in the chart page. Its own implementation: it shares no code with
the app's `cdshooks/` (a stranger EHR, so that each side's bugs show).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import requests
from joserfc import jwt
from joserfc.jwk import ECKey

from smartapp.sandbox.fhir_service import Access, FHIRError, FHIRService

log = logging.getLogger(__name__)

HOOK = "patient-view"
#: The request JWT's life: CDS Hooks asks for a short one.
JWT_LIFETIME = 60
#: Most entries the EHR puts in one prefetched search (the rest: a `next` link).
PREFETCH_LIMIT = 5000
_TOKEN = re.compile(r"\{\{\s*([A-Za-z.]+)\s*\}\}")


def load_cds_key(path: Path) -> ECKey:
    """The EHR's CDS Hooks signing key: generated once, kept in the data folder."""
    if path.exists():
        return ECKey.import_key(json.loads(path.read_text(encoding="utf-8")))
    key = ECKey.generate_key("P-384", private=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(key.as_dict(private=True)), encoding="utf-8")
    temporary.chmod(0o600)
    temporary.replace(path)
    return key


@dataclass(frozen=True)
class ShownCard:
    """A card as the chart page shows it; `launch_url` is set for a smart link it honours."""

    summary: str
    indicator: str
    source: str
    detail: str | None
    link_label: str | None
    launch_url: str | None


class SandboxCDSClient:
    def __init__(
        self,
        *,
        services_url: str,
        issuer: str,
        fhir_base: str,
        service: FHIRService,
        key: ECKey,
        timeout: float = 10.0,
    ) -> None:
        self.services_url = services_url.rstrip("/")
        self.issuer = issuer
        self.fhir_base = fhir_base
        self.service = service
        self.key = key
        self.kid = key.thumbprint()
        self.timeout = timeout
        self._discovered: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._http = requests.Session()

    def jwks(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False)
        public.update({"kid": self.kid, "use": "sig", "alg": "ES384"})
        return {"keys": [public]}

    def _token(self, audience: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": audience,
            "iat": now,
            "exp": now + JWT_LIFETIME,
            "jti": secrets.token_urlsafe(16),
        }
        header = {"alg": "ES384", "typ": "JWT", "kid": self.kid}
        return jwt.encode(header, claims, self.key, algorithms=["ES384"])

    def _service(self) -> dict[str, Any] | None:
        with self._lock:
            if self._discovered is None:
                answer = self._http.get(self.services_url, timeout=self.timeout)
                answer.raise_for_status()
                services = answer.json().get("services") or []
                found = [s for s in services if isinstance(s, dict) and s.get("hook") == HOOK]
                self._discovered = found[0] if found else {}
            return self._discovered or None

    def patient_view(
        self, *, patient_id: str, encounter_id: str | None, user: str
    ) -> list[dict[str, Any]]:
        """The cards the app answers for this chart; [] when it cannot be reached."""
        try:
            service = self._service()
            if service is None:
                return []
            context = {"userId": f"Practitioner/{user}", "patientId": patient_id}
            if encounter_id:
                context["encounterId"] = encounter_id
            url = f"{self.services_url}/{service['id']}"
            body: dict[str, Any] = {
                "hook": HOOK,
                "hookInstance": str(uuid.uuid4()),
                "fhirServer": self.fhir_base,
                "context": context,
                "prefetch": self.prefetch(service.get("prefetch") or {}, context),
            }
            answer = self._http.post(
                url,
                json=body,
                headers={"Authorization": f"Bearer {self._token(url)}"},
                timeout=self.timeout,
            )
            if answer.status_code != 200:
                log.warning("sandbox EHR: CDS service answered HTTP %s", answer.status_code)
                return []
            cards = answer.json().get("cards")
            return [c for c in cards if isinstance(c, dict)] if isinstance(cards, list) else []
        except (requests.RequestException, ValueError) as exc:
            log.warning("sandbox EHR: CDS Hooks call failed (%s)", type(exc).__name__)
            return []

    def prefetch(self, templates: Mapping[str, Any], context: Mapping[str, str]) -> dict[str, Any]:
        """Each template filled from the context and answered from the EHR's own store."""
        values = {f"context.{k}": v for k, v in context.items()}
        out: dict[str, Any] = {}
        for key, template in templates.items():
            if not isinstance(template, str):
                continue
            tokens = _TOKEN.findall(template)
            if any(t not in values for t in tokens):
                continue  # a token this call cannot fill: the key is left out
            query = _TOKEN.sub(lambda m: values[m.group(1)], template)
            try:
                out[key] = self._answer(query)
            except FHIRError as error:
                log.info("sandbox EHR: prefetch %s not answered (%s)", key, error.status)
        return out

    def _answer(self, query: str) -> dict[str, Any]:
        access = Access.system()
        path, _, raw = query.partition("?")
        if not raw and path.count("/") == 1:
            resource_type, resource_id = path.split("/")
            return dict(self.service.read(access, resource_type, resource_id).body)
        params = [(k, v) for k, v in parse_qsl(raw) if k != "_offset"]
        if any(k == "_count" for k, _ in params):
            # A template with its own _count wants that page only (the latest notes).
            return dict(self.service.search(access, path, params))
        entries: list[Any] = []
        offset, more = 0, True
        # The whole result set in one Bundle, as a CDS client's prefetch usually is.
        while more and len(entries) < PREFETCH_LIMIT:
            page = self.service.search(
                access, path, [*params, ("_count", "200"), ("_offset", str(offset))]
            )
            entries += page.get("entry") or []
            more = any(link.get("relation") == "next" for link in page.get("link") or [])
            offset += 200
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
        if more:
            bundle["link"] = [{"relation": "next", "url": f"{self.fhir_base}/{query}"}]
        return bundle

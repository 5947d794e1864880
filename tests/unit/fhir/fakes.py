"""Test doubles for the fhir/ unit tests: a token provider and a FHIR server behind `responses`.

The fake server answers what the loader asks of a real one (read, search by patient with
`category`, `status`, `_id`, `_include=MedicationRequest:medication`, `_sort=(-)date`,
`_count` and `next` links, batch, `/metadata`) from fixture resources, so that the batch
and the non-batch paths can be compared on the same data.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import responses

from smartapp.errors import RelaunchRequired
from smartapp.fhir.snapshot import reference_key

BASE = "https://ehr.example/fhir"
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "fhir"

PATIENT_FIELD = {
    "Condition": "subject",
    "Observation": "subject",
    "MedicationRequest": "subject",
    "MedicationStatement": "subject",
    "AllergyIntolerance": "patient",
    "Procedure": "subject",
    "Immunization": "patient",
    "DocumentReference": "subject",
    "Encounter": "subject",
}

#: Every valid chart fixture of patient pat-1 (not the capability statements or invalid/).
CHART_FIXTURES = (
    "patient.json",
    "encounter.json",
    "condition-diabetes.json",
    "condition-minimal.json",
    "condition-resolved.json",
    "observation-bp.json",
    "observation-hba1c.json",
    "observation-culture.json",
    "observation-minimal.json",
    "medicationrequest-contained.json",
    "medicationrequest-relative.json",
    "medicationrequest-absolute.json",
    "medicationrequest-included.json",
    "medicationrequest-codeableconcept.json",
    "medication-rel.json",
    "medication-abs.json",
    "medication-inc.json",
    "medicationstatement.json",
    "allergyintolerance.json",
    "procedure.json",
    "immunization.json",
    "documentreference-with-data.json",
)


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def chart_fixtures() -> list[dict[str, Any]]:
    return [fixture(name) for name in CHART_FIXTURES]


def vital_observations(
    count: int, *, patient: str = "pat-1", start: int = 0
) -> list[dict[str, Any]]:
    """`count` heart-rate Observations, one a day (a long history that needs paging)."""
    return [
        {
            "resourceType": "Observation",
            "id": f"hr-{i}",
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs",
                        }
                    ]
                }
            ],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{patient}"},
            "effectiveDateTime": f"2025-{1 + (i // 28) % 12:02d}-{1 + i % 28:02d}",
            "valueQuantity": {"value": 60 + i % 40, "unit": "/min"},
        }
        for i in range(start, start + count)
    ]


class FakeTokens:
    """A TokenProvider whose refresh issues a new token (or refuses: `refreshable=False`)."""

    def __init__(self, token: str = "token-one", *, refreshable: bool = True) -> None:
        self.token = token
        self.refreshable = refreshable
        self.refreshes = 0

    def access_token(self) -> str:
        return self.token

    def refresh(self) -> str:
        self.refreshes += 1
        if not self.refreshable:
            raise RelaunchRequired()
        self.token = f"token-refreshed-{self.refreshes}"
        return self.token


def _outcome(status: int, text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }


class FakeFHIRServer:
    def __init__(
        self,
        resources: Iterable[dict[str, Any]],
        *,
        base: str = BASE,
        capability: str = "capabilitystatement-batch.json",
        page_cap: int = 200,
        default_count: int = 50,
        reject_include: bool = False,
        refuse_batch: int | None = None,
        hapi_next_links: bool = False,
        latency: float = 0.0,
        accept_token: str | None = None,
        searches_in_batch: bool = True,
        ignore_sort: bool = False,
    ) -> None:
        self.base = base
        self.capability = fixture(capability)
        self.store: dict[tuple[str, str], dict[str, Any]] = {}
        for resource in resources:
            self.store[(resource["resourceType"], resource["id"])] = resource
        self.page_cap = page_cap
        self.default_count = default_count
        self.reject_include = reject_include
        self.refuse_batch = refuse_batch
        self.hapi_next_links = hapi_next_links
        self.latency = latency
        #: If set, any other bearer token gets 401 (an expired token).
        self.accept_token = accept_token
        #: False: a batch entry that is a search gets 400 (reads still work).
        self.searches_in_batch = searches_in_batch
        #: True: `_sort` is ignored, and the self link shows the search without it.
        self.ignore_sort = ignore_sort
        #: Statuses for the next HTTP requests, whatever they are (then normal service).
        self.fail_next: list[int] = []
        #: Statuses for the next reads/searches of a type, in a batch or not: {"Procedure": [500]}.
        self.fail_type: dict[str, list[int]] = {}
        #: Statuses for the next GETs whose relative URL contains the key (in a batch or not).
        self.fail_query: dict[str, list[int]] = {}
        #: Every HTTP request: "GET <relative url>" or "POST [base]".
        self.http_log: list[str] = []
        #: Every GET the server answered, in a batch or not (relative URLs).
        self.gets: list[str] = []
        #: The entry URLs of each batch.
        self.batches: list[list[str]] = []
        self.authorizations: list[str | None] = []
        self._pages: dict[str, tuple[str, dict[str, list[str]]]] = {}
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0

    # -- wiring ---------------------------------------------------------------------------

    def add_to(self, rsps: responses.RequestsMock) -> FakeFHIRServer:
        pattern = re.compile(re.escape(self.base) + r"([/?].*)?$")
        rsps.add_callback(responses.GET, pattern, callback=self._on_get)
        rsps.add_callback(responses.POST, pattern, callback=self._on_post)
        return self

    def _relative(self, url: str) -> str:
        rest = url[len(self.base) :]
        assert not rest.startswith("/?"), "a page of the base must not gain a slash"
        return rest[1:] if rest.startswith("/") else rest

    def _enter(self, line: str, request: Any) -> int | None:
        with self._lock:
            self.http_log.append(line)
            self.authorizations.append(request.headers.get("Authorization"))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            failure = self.fail_next.pop(0) if self.fail_next else None
        if failure is None and self.accept_token is not None:
            if request.headers.get("Authorization") != f"Bearer {self.accept_token}":
                failure = 401
        if self.latency:
            time.sleep(self.latency)
        return failure

    def _leave(self) -> None:
        with self._lock:
            self.active -= 1

    def _on_get(self, request: Any) -> tuple[int, dict[str, str], str]:
        relative = self._relative(request.url)
        failure = self._enter(f"GET {relative}", request)
        try:
            if failure:
                return failure, {}, json.dumps(_outcome(failure, "injected failure"))
            status, body = self.answer_get(relative)
            return status, {"Content-Type": "application/fhir+json"}, json.dumps(body)
        finally:
            self._leave()

    def _on_post(self, request: Any) -> tuple[int, dict[str, str], str]:
        failure = self._enter("POST [base]", request)
        try:
            if failure:
                return failure, {}, json.dumps(_outcome(failure, "injected failure"))
            if self.refuse_batch:
                return self.refuse_batch, {}, json.dumps(_outcome(self.refuse_batch, "no batch"))
            bundle = json.loads(request.body)
            assert bundle["type"] == "batch"
            urls = [e["request"]["url"] for e in bundle["entry"]]
            assert all(e["request"]["method"] == "GET" for e in bundle["entry"])
            with self._lock:
                self.batches.append(urls)
            entries = []
            for url in urls:
                if not self.searches_in_batch and "?" in url:
                    status, body = 400, _outcome(400, "search not supported in batch")
                else:
                    status, body = self.answer_get(url)
                entry: dict[str, Any] = {
                    "response": {"status": f"{status} {'OK' if status < 300 else 'Error'}"}
                }
                if status < 300:
                    entry["resource"] = body
                else:
                    entry["response"]["outcome"] = body
                entries.append(entry)
            answer = {"resourceType": "Bundle", "type": "batch-response", "entry": entries}
            return 200, {"Content-Type": "application/fhir+json"}, json.dumps(answer)
        finally:
            self._leave()

    # -- FHIR -----------------------------------------------------------------------------

    def answer_get(self, relative: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.gets.append(relative)
        path, _, query = relative.partition("?")
        if path == "metadata":
            return 200, self.capability
        rtype = path.split("/")[0]
        failures = self.fail_type.get(rtype) or next(
            (f for needle, f in self.fail_query.items() if needle in relative and f), None
        )
        if failures:
            with self._lock:
                status = failures.pop(0)
            return status, _outcome(status, "Anna Example's record is locked")
        params = parse_qs(query, keep_blank_values=True)
        if path == "" and "_getpages" in params:
            rtype, params = self._pages[params["_getpages"][0]]
            params = {**params, "_offset": [self._pages_offset(relative)]}
            return self._search(rtype, params)
        parts = path.split("/")
        if len(parts) == 2:
            resource = self.store.get((parts[0], parts[1]))
            if resource is None:
                return 404, _outcome(404, "not found")
            return 200, copy.deepcopy(resource)
        if len(parts) == 1 and parts[0]:
            return self._search(parts[0], params)
        return 400, _outcome(400, "unsupported")

    @staticmethod
    def _pages_offset(relative: str) -> str:
        return parse_qs(urlsplit(relative).query)["_getpagesoffset"][0]

    def _search(self, rtype: str, params: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        def first(name: str) -> str | None:
            return params[name][0] if name in params else None

        found = [r for (t, _), r in self.store.items() if t == rtype]
        patient = first("patient")
        if patient is not None:
            field = PATIENT_FIELD[rtype]
            found = [
                r
                for r in found
                if reference_key((r.get(field) or {}).get("reference", "")) == f"Patient/{patient}"
            ]
        if (category := first("category")) is not None:
            wanted = set(category.split(","))
            found = [
                r
                for r in found
                if any(
                    c.get("code") in wanted
                    for cc in r.get("category", [])
                    for c in cc.get("coding", [])
                )
            ]
        if (status := first("status")) is not None:
            found = [r for r in found if r.get("status") in status.split(",")]
        if (ids := first("_id")) is not None:
            found = [r for r in found if r["id"] in ids.split(",")]
        if first("_sort") in ("-date", "date") and not self.ignore_sort:
            found.sort(
                key=lambda r: r.get("date") or r.get("effectiveDateTime", ""),
                reverse=first("_sort") == "-date",
            )
        include = first("_include")
        if include is not None:
            if self.reject_include or include != "MedicationRequest:medication":
                return 400, _outcome(400, "unsupported _include")
        count = min(int(first("_count") or self.default_count), self.page_cap)
        offset = int(first("_offset") or 0)
        page = found[offset : offset + count]
        entries = [
            {
                "fullUrl": f"{self.base}/{r['resourceType']}/{r['id']}",
                "resource": copy.deepcopy(r),
                "search": {"mode": "match"},
            }
            for r in page
        ]
        if include is not None:
            seen: set[str] = set()
            for r in page:
                ref = (r.get("medicationReference") or {}).get("reference", "")
                if ref.startswith("#") or not ref:
                    continue
                if "://" in ref and not ref.startswith(self.base + "/"):
                    continue
                key = reference_key(ref)
                med = self.store.get(tuple(key.split("/", 1)))  # type: ignore[arg-type]
                if med is not None and key not in seen:
                    seen.add(key)
                    entries.append(
                        {
                            "fullUrl": f"{self.base}/{key}",
                            "resource": copy.deepcopy(med),
                            "search": {"mode": "include"},
                        }
                    )
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "link": [{"relation": "self", "url": self._self_url(rtype, params)}],
            "entry": entries,
        }
        if offset + count < len(found):
            bundle["link"].append(
                {"relation": "next", "url": self.next_url(rtype, params, offset + count)}
            )
        return 200, bundle

    def _self_url(self, rtype: str, params: dict[str, list[str]]) -> str:
        if not self.ignore_sort:
            return f"{self.base}/{rtype}"
        used = {k: v[0] for k, v in params.items() if k != "_sort"}
        return f"{self.base}/{rtype}?{urlencode(used)}"

    def next_url(self, rtype: str, params: dict[str, list[str]], offset: int) -> str:
        if self.hapi_next_links:
            token = f"page{len(self._pages)}"
            with self._lock:
                self._pages[token] = (rtype, {k: v for k, v in params.items() if k != "_offset"})
            return f"{self.base}?_getpages={token}&_getpagesoffset={offset}&_bundletype=searchset"
        query = {k: v[0] for k, v in params.items() if k != "_offset"}
        query["_offset"] = str(offset)
        return f"{self.base}/{rtype}?{urlencode(query)}"

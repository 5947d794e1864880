"""The sandbox's FHIR R4 engine: read, search, create, update, batch and transaction.

Framework-free: it takes an `Access` (what the bearer token allows) and plain data, and
raises `FHIRError` with an HTTP status and an OperationOutcome.
https://hl7.org/fhir/R4/http.html
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from smartapp.sandbox import search
from smartapp.sandbox.scopes import Grant, Permission
from smartapp.sandbox.store import Store, StoredResource

Resource = dict[str, Any]

#: The types the sandbox serves (the Patient compartment plus what it points at).
SUPPORTED_TYPES = (
    "Patient",
    "Practitioner",
    "Organization",
    "Encounter",
    "Condition",
    "Observation",
    "DiagnosticReport",
    "MedicationRequest",
    "Medication",
    "AllergyIntolerance",
    "Procedure",
    "Immunization",
    "DocumentReference",
    "Provenance",
    "Device",
)
#: What an app may create, and update, through the API (the sandbox controls may write all).
CREATABLE_TYPES = frozenset({"DocumentReference", "Provenance", "Device"})
UPDATABLE_TYPES = frozenset({"DocumentReference"})

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 200
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_CONTROL_PARAMS = frozenset(
    {
        "_count",
        "_offset",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_format",
        "_elements",
        "_total",
        "_pretty",
    }
)


class FHIRError(Exception):
    """An HTTP error with a FHIR OperationOutcome body."""

    def __init__(
        self, status: int, code: str, diagnostics: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.headers = dict(headers or {})

    def outcome(self) -> Resource:
        return operation_outcome(self.code, self.diagnostics)


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> Resource:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def status_line(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


@dataclass(frozen=True)
class Access:
    """What one request may do: a token's grant and context, or the sandbox itself."""

    grant: Grant | None
    patient: str | None = None
    user: str | None = None
    client_id: str | None = None

    @classmethod
    def system(cls) -> Access:
        return cls(grant=None)

    def permission(self, resource_type: str, action: str) -> Permission:
        if self.grant is None:
            return Permission(True, False, ())
        return self.grant.check(resource_type, action)


@cache
def _model(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


def validation_problem(resource: Resource) -> str | None:
    """Why `resource` is not valid R4 (field paths only), or None."""
    try:
        _model(resource["resourceType"]).model_validate(resource)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
        return "invalid element(s): " + ", ".join(fields[:8])
    except (KeyError, ValueError, TypeError) as exc:
        return f"not a valid resource ({type(exc).__name__})"
    return None


def walk_references(node: Any, visit: Callable[[dict[str, Any]], None]) -> None:
    """Call `visit` on every Reference-shaped dict (one with a string `reference`)."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            visit(node)
        for key, value in node.items():
            if key != "contained":
                walk_references(value, visit)
    elif isinstance(node, list):
        for item in node:
            walk_references(item, visit)


@dataclass
class _Outcome:
    status: int
    stored: StoredResource | None = None
    body: Resource | None = None
    headers: dict[str, str] = field(default_factory=dict)


class FHIRService:
    def __init__(
        self,
        store: Store,
        *,
        base_url: str,
        rewrite_urn_uuids: bool = False,
        honour_sort: bool = True,
        observation_needs_category: bool = False,
    ) -> None:
        self.store = store
        #: False: `_sort` is ignored and left out of the self link (a server without it).
        self.honour_sort = honour_sort
        #: True: an Observation search without category or code answers 400 (as Epic's).
        self.observation_needs_category = observation_needs_category
        self.base_url = base_url.rstrip("/")
        #: Like some real servers (and as FHIR allows for elements of type uri): replace a
        #: transaction entry's urn:uuid fullUrl wherever it appears, identifiers included.
        self.rewrite_urn_uuids = rewrite_urn_uuids

    # -- helpers --------------------------------------------------------------------
    def _require_type(self, resource_type: str) -> None:
        if resource_type not in SUPPORTED_TYPES:
            raise FHIRError(
                404, "not-supported", f"Resource type {resource_type[:64]!r} is not supported here"
            )

    def _permission(self, access: Access, resource_type: str, action: str) -> Permission:
        permission = access.permission(resource_type, action)
        if not permission.allowed:
            verb = {"r": "read", "s": "search", "c": "create", "u": "update", "d": "delete"}
            raise FHIRError(
                403,
                "forbidden",
                f"The access token's scopes do not allow {verb[action]} on {resource_type}",
            )
        return permission

    def _visible(self, access: Access, permission: Permission, item: StoredResource) -> bool:
        if permission.compartment and not self._in_compartment(access, item):
            return False
        if permission.queries:
            return any(
                all(self._matches(item, name, value) for name, value in query)
                for query in permission.queries
            )
        return True

    def _matches(self, item: StoredResource, name: str, value: str) -> bool:
        """`search.matches` for one clause, worked out once per stored version of `item`."""
        key = ("match", self.base_url, name, value)
        hit = item.derived.get(key)
        if hit is None:
            hit = item.derived[key] = search.matches(item.body, name, value, base_url=self.base_url)
        return bool(hit)

    @staticmethod
    def _sort_date(item: StoredResource) -> str:
        date = item.derived.get("sort_date")
        if date is None:
            date = item.derived["sort_date"] = search.sort_key_date(item.body)
        return str(date)

    def _in_compartment(self, access: Access, item: StoredResource) -> bool:
        if item.resource_type == "Patient":
            return item.id == access.patient
        if item.resource_type in search.PATIENT_REFERENCE_PATHS:
            return item.patient is not None and item.patient == access.patient
        # Shared resources (Medication, Practitioner, ...) belong to no patient.
        return True

    def full_url(self, resource_type: str, resource_id: str) -> str:
        return f"{self.base_url}/{resource_type}/{resource_id}"

    def patient_of(
        self, resource: Resource, pending: Mapping[str, str | None] | None = None
    ) -> str | None:
        """The id of the patient whose compartment `resource` belongs to, if any."""
        rtype = resource.get("resourceType")
        if rtype == "Patient":
            return str(resource.get("id"))
        for path in search.PATIENT_REFERENCE_PATHS.get(str(rtype), ()):
            for ref in search._refs(path)(resource):
                ref = search.normalize_reference(ref, self.base_url)
                target_type, _, target_id = ref.partition("/")
                if target_type == "Patient" and target_id:
                    return target_id
                if rtype == "Provenance" and target_id:
                    if pending and pending.get(ref):
                        return pending[ref]
                    found = self.store.patient_of(target_type, target_id)
                    if found:
                        return found
        return None

    # -- read -----------------------------------------------------------------------
    def read(self, access: Access, resource_type: str, resource_id: str) -> StoredResource:
        self._require_type(resource_type)
        if self._is_own_user(access, resource_type, resource_id):
            # SMART's fhirUser scope lets an app read the signed-in user's own resource.
            item = self.store.get(resource_type, resource_id)
            if item is not None:
                return item
        permission = self._permission(access, resource_type, "r")
        item = self.store.get(resource_type, resource_id)
        if item is None:
            raise FHIRError(404, "not-found", f"{resource_type}/{resource_id[:64]} is not known")
        if not self._visible(access, permission, item):
            raise FHIRError(
                403,
                "forbidden",
                f"{resource_type}/{resource_id[:64]} is outside the access token's patient "
                "compartment or granted scopes",
            )
        return item

    @staticmethod
    def _is_own_user(access: Access, resource_type: str, resource_id: str) -> bool:
        return (
            access.grant is not None
            and "fhirUser" in access.grant
            and resource_type == "Practitioner"
            and resource_id == access.user
        )

    # -- search ---------------------------------------------------------------------
    def _patient_param(self, value: str) -> str:
        ref = search.normalize_reference(value, self.base_url)
        if "/" in ref:
            rtype, _, rid = ref.partition("/")
            return rid if rtype == "Patient" else ""
        return ref

    def find(
        self,
        access: Access,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        *,
        strict: bool,
        warnings: list[str] | None = None,
        action: str = "s",
    ) -> list[StoredResource]:
        """Every visible resource of a type matching `params` (no paging, no includes)."""
        self._require_type(resource_type)
        permission = self._permission(access, resource_type, action)
        clauses: list[tuple[str, str]] = []
        for name, value in params:
            if name in _CONTROL_PARAMS:
                continue
            if not search.is_known(resource_type, name):
                if strict:
                    raise FHIRError(
                        400,
                        "not-supported",
                        f"Unknown search parameter {name[:64]!r} for {resource_type}",
                    )
                if warnings is not None:
                    warnings.append(f"Ignored unknown search parameter {name[:64]!r}")
                continue
            clauses.append((name, value))

        # A patient-scoped token sees one patient; asking for another is an explicit 403
        # rather than an empty result, so a confused app learns why.
        patient_filter: str | None = None
        for name, value in clauses:
            base_name = name.partition(":")[0]
            if base_name in ("patient", "subject") and "," not in value:
                wanted = self._patient_param(value)
                if (
                    permission.compartment
                    and access.patient
                    and wanted
                    and (wanted != access.patient)
                ):
                    raise FHIRError(
                        403, "forbidden", "The access token is limited to another patient"
                    )
                patient_filter = wanted or patient_filter
        in_compartment = resource_type in search.PATIENT_REFERENCE_PATHS
        if (
            permission.compartment
            and access.patient
            and (in_compartment or resource_type == "Patient")
        ):
            patient_filter = access.patient
        if (
            permission.compartment
            and not access.patient
            and (in_compartment or resource_type == "Patient")
        ):
            raise FHIRError(403, "forbidden", "The access token has no patient in context")

        if resource_type == "Patient" and patient_filter:
            item = self.store.get("Patient", patient_filter)
            candidates = [item] if item else []
        elif in_compartment and patient_filter:
            candidates = self.store.list(resource_type, patient=patient_filter)
        else:
            candidates = self.store.list(resource_type)

        results = []
        for item in candidates:
            try:
                if not all(self._matches(item, name, value) for name, value in clauses):
                    continue
            except search.SearchError as exc:
                raise FHIRError(400, "invalid", str(exc)) from exc
            if self._visible(access, permission, item):
                results.append(item)
        return results

    def search(
        self,
        access: Access,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        *,
        strict: bool = False,
    ) -> Resource:
        """A searchset Bundle: one page of matches, `total`, self/next links, includes."""
        if (
            self.observation_needs_category
            and resource_type == "Observation"
            and not any(name.split(":")[0] in ("category", "code", "_id") for name, _ in params)
        ):
            raise FHIRError(
                400, "required", "Observation searches need a category or a code parameter"
            )
        if not self.honour_sort:
            params = [(n, v) for n, v in params if n != "_sort"]
        warnings: list[str] = []
        results = self.find(access, resource_type, params, strict=strict, warnings=warnings)
        control = {name: value for name, value in params if name in _CONTROL_PARAMS}

        sort = control.get("_sort", "")
        for key in reversed([s for s in sort.split(",") if s]):
            descending = key.startswith("-")
            name = key.lstrip("-")
            if name == "date":
                results.sort(key=self._sort_date, reverse=descending)
            elif name == "_lastUpdated":
                results.sort(key=lambda i: i.last_updated, reverse=descending)
            elif name == "_id":
                results.sort(key=lambda i: i.id, reverse=descending)
            elif strict:
                raise FHIRError(400, "not-supported", f"Cannot sort by {name[:64]!r}")
            else:
                warnings.append(f"Ignored unsupported sort {name[:64]!r}")

        count = _int_param(control.get("_count"), DEFAULT_PAGE_SIZE, "_count")
        count = min(count, MAX_PAGE_SIZE)
        offset = _int_param(control.get("_offset"), 0, "_offset")
        if control.get("_summary") == "count":
            count = 0
        page = results[offset : offset + count]

        used = [
            (n, v)
            for n, v in params
            if n not in ("_count", "_offset", "_format", "_pretty")
            and (n in _CONTROL_PARAMS or search.is_known(resource_type, n))
        ]

        def link(at: int) -> str:
            query = urlencode(used + [("_count", str(count)), ("_offset", str(at))])
            return f"{self.base_url}/{resource_type}?{query}"

        links = [{"relation": "self", "url": link(offset)}]
        if count and offset + count < len(results):
            links.append({"relation": "next", "url": link(offset + count)})
        if count and offset > 0:
            links.append({"relation": "previous", "url": link(max(0, offset - count))})

        entries = [self._entry(item, "match") for item in page]
        seen = {(item.resource_type, item.id) for item in page}
        for include in _values(params, "_include"):
            entries.extend(self._includes(access, page, include, seen))
        for revinclude in _values(params, "_revinclude"):
            entries.extend(self._revincludes(access, page, revinclude, seen))
        if warnings:
            entries.append(
                {
                    "resource": operation_outcome("not-supported", "; ".join(warnings), "warning"),
                    "search": {"mode": "outcome"},
                }
            )
        bundle: Resource = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "searchset",
            "total": len(results),
            "link": links,
        }
        if entries:
            bundle["entry"] = entries
        return bundle

    def _entry(self, item: StoredResource, mode: str) -> Resource:
        return {
            "fullUrl": self.full_url(item.resource_type, item.id),
            "resource": item.body,
            "search": {"mode": mode},
        }

    def _includes(
        self, access: Access, page: list[StoredResource], include: str, seen: set[tuple[str, str]]
    ) -> list[Resource]:
        source, _, rest = include.partition(":")
        name, _, target_type = rest.partition(":")
        param = search.params_for(source).get(name)
        if param is None or param.kind != "reference":
            raise FHIRError(400, "not-supported", f"Cannot _include {include[:80]!r}")
        entries = []
        for item in page:
            if item.resource_type != source:
                continue
            for ref in param.extract(item.body):
                rtype, _, rid = search.normalize_reference(ref, self.base_url).partition("/")
                if not rid or (target_type and rtype != target_type) or (rtype, rid) in seen:
                    continue
                if rtype not in SUPPORTED_TYPES:
                    continue
                permission = access.permission(rtype, "r")
                found = self.store.get(rtype, rid)
                # Included resources the token may not read are left out, not an error.
                if (
                    found is None
                    or not permission.allowed
                    or not self._visible(access, permission, found)
                ):
                    continue
                seen.add((rtype, rid))
                entries.append(self._entry(found, "include"))
        return entries

    def _revincludes(
        self,
        access: Access,
        page: list[StoredResource],
        revinclude: str,
        seen: set[tuple[str, str]],
    ) -> list[Resource]:
        source, _, name = revinclude.partition(":")
        name = name.partition(":")[0]
        param = search.params_for(source).get(name)
        if source not in SUPPORTED_TYPES or param is None or param.kind != "reference":
            raise FHIRError(400, "not-supported", f"Cannot _revinclude {revinclude[:80]!r}")
        permission = access.permission(source, "r")
        if not permission.allowed or not page:
            return []
        wanted = {f"{item.resource_type}/{item.id}" for item in page}
        entries = []
        for candidate in self.store.list(source):
            if (source, candidate.id) in seen:
                continue
            refs = {
                search.normalize_reference(r, self.base_url) for r in param.extract(candidate.body)
            }
            if refs & wanted and self._visible(access, permission, candidate):
                seen.add((source, candidate.id))
                entries.append(self._entry(candidate, "include"))
        return entries

    # -- writes ---------------------------------------------------------------------
    def _check_new_resource(
        self,
        access: Access,
        resource: Any,
        resource_type: str,
        *,
        action: str,
        pending: Mapping[str, str | None] | None = None,
    ) -> str | None:
        """Validate a resource about to be written; return its compartment's patient."""
        if not isinstance(resource, dict):
            raise FHIRError(400, "structure", "The request body must be a FHIR resource")
        if resource.get("resourceType") != resource_type:
            raise FHIRError(400, "invalid", f"The body's resourceType must be {resource_type}")
        allowed = CREATABLE_TYPES if action == "c" else UPDATABLE_TYPES
        if access.grant is not None and resource_type not in allowed:
            raise FHIRError(
                405, "not-supported", f"This server does not accept writes of {resource_type}"
            )
        permission = self._permission(access, resource_type, action)
        problem = validation_problem(resource)
        if problem:
            raise FHIRError(400, "invalid", f"{resource_type} is not valid R4: {problem}")
        contained_ids = {
            c.get("id") for c in resource.get("contained") or [] if isinstance(c, dict)
        }
        missing: list[str] = []

        def check(reference: dict[str, Any]) -> None:
            ref = reference["reference"]
            if ref.startswith("#"):
                if ref[1:] not in contained_ids:
                    missing.append(ref)
                return
            if ref.startswith("urn:"):
                missing.append(ref)
                return
            local = search.normalize_reference(ref, self.base_url)
            if "://" in local:
                return  # another server's resource: not ours to check
            rtype, _, rid = local.partition("/")
            if pending is not None and local in pending:
                return
            if rtype not in SUPPORTED_TYPES or not rid or not self.store.exists(rtype, rid):
                missing.append(local)

        walk_references(resource, check)
        if missing:
            raise FHIRError(
                422,
                "processing",
                f"{resource_type} refers to resources that do not exist: "
                + ", ".join(m[:80] for m in missing[:5]),
            )
        patient = self.patient_of(resource, pending)
        if permission.compartment and resource_type in search.PATIENT_REFERENCE_PATHS:
            if patient is None or patient != access.patient:
                raise FHIRError(
                    403,
                    "forbidden",
                    f"A {resource_type} written with this token must belong to "
                    "the patient in context",
                )
        if permission.queries and not any(
            all(search.matches(resource, n, v, base_url=self.base_url) for n, v in q)
            for q in permission.queries
        ):
            raise FHIRError(403, "forbidden", "The resource is outside the granted scope")
        return patient

    def create(
        self,
        access: Access,
        resource_type: str,
        resource: Any,
        *,
        if_none_exist: str | None = None,
        resource_id: str | None = None,
        pending: Mapping[str, str | None] | None = None,
    ) -> _Outcome:
        self._require_type(resource_type)
        if if_none_exist:
            existing = self.find(
                access, resource_type, _query(if_none_exist), strict=True, action="c"
            )
            if len(existing) == 1:
                return _Outcome(200, existing[0])
            if len(existing) > 1:
                raise FHIRError(
                    412,
                    "duplicate",
                    f"If-None-Exist matched {len(existing)} {resource_type} resources",
                )
        if not isinstance(resource, dict):
            raise FHIRError(400, "structure", "The request body must be a FHIR resource")
        # The server assigns the id of a created resource and ignores any the client sent.
        body = copy.deepcopy(resource)
        body["id"] = resource_id or str(uuid.uuid4())
        patient = self._check_new_resource(access, body, resource_type, action="c", pending=pending)
        _strip_version(body)
        stored = self.store.put(body, patient=patient)
        return _Outcome(201, stored)

    def update(
        self,
        access: Access,
        resource_type: str,
        resource_id: str,
        resource: Any,
        *,
        if_match: str | None = None,
        pending: Mapping[str, str | None] | None = None,
    ) -> _Outcome:
        self._require_type(resource_type)
        if not _ID_RE.match(resource_id):
            raise FHIRError(400, "invalid", "Resource ids are 1-64 of A-Z a-z 0-9 - .")
        if not isinstance(resource, dict) or resource.get("id") != resource_id:
            raise FHIRError(400, "invalid", "The body's id must equal the id in the URL")
        with self.store.transaction():
            current = self.store.get(resource_type, resource_id)
            if current is not None:
                permission = self._permission(access, resource_type, "u")
                if not self._visible(access, permission, current):
                    raise FHIRError(
                        403, "forbidden", "The resource is outside the token's patient compartment"
                    )
                if if_match is not None and if_match.strip() not in (
                    f'W/"{current.version}"',
                    f'"{current.version}"',
                ):
                    raise FHIRError(
                        412,
                        "conflict",
                        f"Version conflict: the current version is {current.version}",
                    )
            elif if_match is not None:
                raise FHIRError(
                    412, "conflict", "If-Match given for a resource that does not exist"
                )
            patient = self._check_new_resource(
                access, resource, resource_type, action="u" if current else "c", pending=pending
            )
            body = copy.deepcopy(resource)
            _strip_version(body)
            stored = self.store.put(body, patient=patient)
        return _Outcome(200 if current else 201, stored)

    # -- bundles --------------------------------------------------------------------
    def process_bundle(self, access: Access, bundle: Any, *, prefer: str = "") -> Resource:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise FHIRError(400, "structure", "POST to the base URL takes a Bundle")
        kind = bundle.get("type")
        if kind == "batch":
            return self._batch(access, bundle, prefer)
        if kind == "transaction":
            return self._transaction(access, bundle, prefer)
        raise FHIRError(
            400, "invalid", "POST to the base URL takes a Bundle of type batch or transaction"
        )

    def _parse_request(self, entry: Any) -> tuple[str, str, list[tuple[str, str]], Any]:
        if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
            raise FHIRError(400, "structure", "Every entry needs a request")
        request = entry["request"]
        method = str(request.get("method", "")).upper()
        url = request.get("url")
        if not isinstance(url, str) or not url:
            raise FHIRError(400, "structure", "Every entry's request needs a url")
        if url.startswith(self.base_url + "/"):
            url = url[len(self.base_url) + 1 :]
        path, _, query = url.lstrip("/").partition("?")
        return method, path, _query(query), entry.get("resource")

    def _execute_get(self, access: Access, path: str, params: list[tuple[str, str]]) -> _Outcome:
        parts = [p for p in path.split("/") if p]
        if len(parts) == 1:
            return _Outcome(200, body=self.search(access, parts[0], params))
        if len(parts) == 2:
            item = self.read(access, parts[0], parts[1])
            return _Outcome(200, item)
        raise FHIRError(400, "not-supported", f"Unsupported request url {path[:80]!r}")

    def _response_entry(self, outcome: _Outcome, prefer: str) -> Resource:
        response: Resource = {"status": status_line(outcome.status)}
        entry: Resource = {}
        if outcome.stored is not None:
            item = outcome.stored
            response["etag"] = f'W/"{item.version}"'
            response["lastModified"] = item.last_updated
            if outcome.status in (200, 201):
                response["location"] = f"{item.resource_type}/{item.id}/_history/{item.version}"
            entry["fullUrl"] = self.full_url(item.resource_type, item.id)
            if "return=minimal" not in prefer:
                entry["resource"] = item.body
        elif outcome.body is not None:
            entry["resource"] = outcome.body
        entry["response"] = response
        return entry

    def _batch(self, access: Access, bundle: Resource, prefer: str) -> Resource:
        responses = []
        for entry in bundle.get("entry") or []:
            try:
                method, path, params, resource = self._parse_request(entry)
                if method == "GET":
                    outcome = self._execute_get(access, path, params)
                elif method == "POST":
                    outcome = self.create(
                        access,
                        path.strip("/"),
                        resource,
                        if_none_exist=entry["request"].get("ifNoneExist"),
                    )
                elif method == "PUT":
                    rtype, _, rid = path.partition("/")
                    outcome = self.update(
                        access, rtype, rid, resource, if_match=entry["request"].get("ifMatch")
                    )
                else:
                    raise FHIRError(
                        405, "not-supported", f"Method {method[:10]!r} is not supported in a batch"
                    )
                responses.append(self._response_entry(outcome, prefer))
            except FHIRError as error:
                responses.append(
                    {"response": {"status": status_line(error.status), "outcome": error.outcome()}}
                )
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "batch-response",
            "entry": responses,
        }

    def _transaction(self, access: Access, bundle: Resource, prefer: str) -> Resource:
        entries = bundle.get("entry") or []
        parsed = []
        for index, entry in enumerate(entries):
            method, path, params, resource = self._parse_request(entry)
            if method not in ("GET", "POST", "PUT"):
                raise FHIRError(
                    405, "not-supported", f"entry {index}: method {method[:10]!r} is not supported"
                )
            parsed.append((index, method, path, params, resource, entry))

        results: dict[int, _Outcome] = {}
        with self.store.transaction():
            # Assign every created resource its id first, so references between entries
            # (urn:uuid fullUrls) resolve whatever order the entries come in.
            mapping: dict[str, str] = {}
            pending: dict[str, str | None] = {}
            planned: dict[int, tuple[str, str | None]] = {}
            for _index, method, path, _params, _resource, entry in parsed:
                full_url = entry.get("fullUrl")
                if method == "PUT":
                    rtype, _, rid = path.partition("/")
                    if isinstance(full_url, str):
                        mapping[full_url] = f"{rtype}/{rid}"
                    pending[f"{rtype}/{rid}"] = None
            posts = [p for p in parsed if p[1] == "POST"]
            while posts:
                # A conditional create may name another entry's fullUrl in its ifNoneExist
                # (e.g. a Provenance's target): plan that entry first, then substitute.
                unplanned = {p[5].get("fullUrl") for p in posts} - {None}
                ready = [
                    p
                    for p in posts
                    if not any(
                        url in (p[5]["request"].get("ifNoneExist") or "")
                        for url in unplanned - {p[5].get("fullUrl")}
                    )
                ] or posts[:1]
                for item in ready:
                    posts.remove(item)
                    index, _method, path, _params, _resource, entry = item
                    full_url = entry.get("fullUrl")
                    rtype = path.strip("/")
                    self._require_type(rtype)
                    existing_id = None
                    if_none_exist = entry["request"].get("ifNoneExist")
                    if if_none_exist:
                        for url, ref in mapping.items():
                            if_none_exist = if_none_exist.replace(url, ref)
                        found = self.find(
                            access, rtype, _query(if_none_exist), strict=True, action="c"
                        )
                        if len(found) > 1:
                            raise FHIRError(
                                412,
                                "duplicate",
                                f"entry {index}: ifNoneExist matched {len(found)} resources",
                            )
                        if found:
                            existing_id = found[0].id
                            results[index] = _Outcome(200, found[0])
                    new_id = existing_id or str(uuid.uuid4())
                    planned[index] = (new_id, existing_id)
                    if isinstance(full_url, str):
                        mapping[full_url] = f"{rtype}/{new_id}"
                    if not existing_id:
                        pending[f"{rtype}/{new_id}"] = None

            def resolve(reference: dict[str, Any]) -> None:
                if reference["reference"] in mapping:
                    reference["reference"] = mapping[reference["reference"]]

            # Patients first, then everything else, Provenance last: a resource's
            # compartment is known by the time anything that points at it is written.
            def order(item: tuple[Any, ...]) -> int:
                rtype = item[2].partition("/")[0].strip("/")
                return 0 if rtype == "Patient" else 2 if rtype == "Provenance" else 1

            writes = sorted((p for p in parsed if p[1] in ("POST", "PUT")), key=order)
            for index, method, path, _params, resource, entry in writes:
                try:
                    body = copy.deepcopy(resource)
                    walk_references(body, resolve)
                    if self.rewrite_urn_uuids:
                        body = _replace_strings(body, mapping)
                    if method == "POST":
                        new_id, existing_id = planned[index]
                        if existing_id:
                            continue
                        rtype = path.strip("/")
                        outcome = self.create(
                            access, rtype, body, resource_id=new_id, pending=pending
                        )
                    else:
                        rtype, _, rid = path.partition("/")
                        outcome = self.update(
                            access,
                            rtype,
                            rid,
                            body,
                            if_match=entry["request"].get("ifMatch"),
                            pending=pending,
                        )
                    assert outcome.stored is not None
                    pending[f"{rtype}/{outcome.stored.id}"] = outcome.stored.patient
                    results[index] = outcome
                except FHIRError as error:
                    raise FHIRError(
                        error.status, error.code, f"entry {index}: {error.diagnostics}"
                    ) from error
            for index, method, path, params, _resource, _entry in parsed:
                if method == "GET":
                    try:
                        results[index] = self._execute_get(access, path, params)
                    except FHIRError as error:
                        raise FHIRError(
                            error.status, error.code, f"entry {index}: {error.diagnostics}"
                        ) from error
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "transaction-response",
            "entry": [self._response_entry(results[i], prefer) for i in range(len(parsed))],
        }


def _replace_strings(node: Any, mapping: Mapping[str, str]) -> Any:
    """`node` with every string that is a key of `mapping` replaced by its value."""
    if isinstance(node, dict):
        return {k: _replace_strings(v, mapping) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_strings(v, mapping) for v in node]
    if isinstance(node, str):
        return mapping.get(node, node)
    return node


def _strip_version(body: Resource) -> None:
    """The server, not the client, decides versionId and lastUpdated."""
    if isinstance(body.get("meta"), dict):
        body["meta"].pop("versionId", None)
        body["meta"].pop("lastUpdated", None)
    elif "meta" in body:
        del body["meta"]


def _values(params: Iterable[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in params if key == name]


def _query(text: str) -> list[tuple[str, str]]:
    return parse_qsl(text.lstrip("?"), keep_blank_values=True)


def _int_param(value: str | None, default: int, name: str) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError as exc:
        raise FHIRError(400, "invalid", f"{name} must be a whole number") from exc
    if number < 0:
        raise FHIRError(400, "invalid", f"{name} must not be negative")
    return number

"""Load a patient's chart snapshot in as few round trips as the server allows: one batch a round.

https://hl7.org/fhir/R4/http.html#transaction (batch) and https://hl7.org/fhir/R4/search.html

The load runs in rounds. Round 1 asks for everything at once: the Patient, the launch's
Encounter and one search per resource type (two for Observation: vital signs and
laboratory) with a large `_count`. Each later round asks, again all at once, for whatever
the previous answers showed is still missing: every search's `next` page, the
Medications that `_include` did not bring, and one retry of an entry that failed with
429/5xx. Where the CapabilityStatement lists the `batch` interaction a round is ONE batch
Bundle; otherwise it is concurrent GETs on a small thread pool (at most 6). Both paths
share every rule below, so they produce the same snapshot. Each answer's resources are
validated as it arrives, while the round's other requests are still on the wire.

Where the server sorts Observations by date, each category is read from both ends at
once: newest first, and oldest first in the same round (the two in a batch of their own,
sent beside the chart's). A list of up to two pages then takes one round; a longer one
that fits in `max_pages` takes half the rounds, the two ends meeting in the middle (the
`total` says when). A list too long for that is read newest first only, the oldest-first
page dropped, so that what a truncated list lacks is still its oldest part.

A type that fails becomes a `search_failed` problem, not an exception; only the Patient is
required. Types the granted scopes do not cover are never asked for.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any, Literal
from urllib.parse import urlencode

from smartapp.errors import (
    ChartTooLarge,
    FatalUpstreamError,
    RelaunchRequired,
    TemporaryUpstreamError,
    UpstreamError,
)
from smartapp.fhir.capabilities import (
    supports_batch,
    supports_include,
    supports_interaction,
    supports_search_param,
    supports_sort,
)
from smartapp.fhir.client import (
    BatchRequest,
    FHIRClient,
    FHIRRequestRefused,
    next_link,
    split_search_bundle,
)
from smartapp.fhir.compartment import Verdict, identifier_keys, matches_identifiers, verdict
from smartapp.fhir.parsing import ResourceValidator, assemble_snapshot
from smartapp.fhir.readers import parse_fhir_date
from smartapp.fhir.snapshot import SNAPSHOT_TYPES, ChartSnapshot, FHIRResource, SnapshotProblem
from smartapp.quirks import QuirksProfile, catalog

log = logging.getLogger(__name__)

#: Page size asked for; servers may cap it lower, and then more pages are followed.
SEARCH_COUNT = 200
#: How many of the most recent DocumentReferences the snapshot holds (one page, no paging).
RECENT_DOCUMENTS = 10
#: Concurrent requests on the path for servers without batch.
MAX_WORKERS = 6
#: Medication ids per `_id` search on the path for servers without batch (URL length).
MEDICATION_IDS_PER_SEARCH = 50
MEDICATION_INCLUDE = "MedicationRequest:medication"
#: DocumentReference metadata: `content` must stay (R4 requires it); its `data` is dropped here.
DOCUMENT_ELEMENTS = (
    "identifier,status,docStatus,type,category,subject,date,author,authenticator,"
    "custodian,relatesTo,description,securityLabel,content,context"
)

#: Every type a snapshot can hold, as `readable_types` and `not_granted` name them.
READABLE_TYPES: tuple[str, ...] = ("Patient", "Encounter", *SNAPSHOT_TYPES)
#: Where each searched type points at its patient.
PATIENT_FIELD: Mapping[str, str] = {
    "Condition": "subject",
    "Observation": "subject",
    "MedicationRequest": "subject",
    "MedicationStatement": "subject",
    "AllergyIntolerance": "patient",
    "Procedure": "subject",
    "Immunization": "patient",
    "DocumentReference": "subject",
}

#: The searches of round 1: (type, category). Observations are asked for per category so
#: that each result set is smaller and more of the history arrives in the first round.
SEARCHES: tuple[tuple[str, str | None], ...] = (
    ("Condition", None),
    ("Observation", "vital-signs"),
    ("Observation", "laboratory"),
    ("MedicationRequest", None),
    ("MedicationStatement", None),
    ("AllergyIntolerance", None),
    ("Procedure", None),
    ("Immunization", None),
    ("DocumentReference", None),
)

#: Types many servers do not offer (US Core 4+ dropped MedicationStatement for
#: MedicationRequest with `reported`): asked for only when the CapabilityStatement lists a
#: search for them, or when there is no usable statement to say.
OPTIONAL_TYPES = frozenset({"MedicationStatement"})
#: Order statuses read: current ones, and drafts (shown as proposed, never as therapy).
MEDICATION_REQUEST_STATUSES = "active,on-hold,draft"
#: Stopped and completed orders are read by a second search, for a recent window only:
#: the A&P says "lisinopril stopped for dry cough; losartan since", and years of finished
#: antibiotic courses would only be paged through. The window is by `authoredon` (R4 has
#: no search on when an order ended), asked of the server where its CapabilityStatement
#: lists the parameter; otherwise one page is read and the window applied here.
MEDICATION_HISTORY_STATUSES = "stopped,completed"
MEDICATION_HISTORY_MONTHS = 12
HISTORY_LABEL = "MedicationRequest (stopped or completed)"
#: The searched types read newest first where the server declares `_sort` (by `date`).
SORTED_TYPES = frozenset({"Observation"})

_TEMPORARY = frozenset({429, 500, 502, 503, 504})
#: Entry statuses that, on every search of a batch, mean "no searches in a batch here".
_NO_SEARCH_IN_BATCH = frozenset({400, 405, 422, 501})
_ID = re.compile(r"[A-Za-z0-9\-.]{1,255}")  # as FHIRClient's: longer than R4's 64


def search_params(
    resource_type: str,
    patient_id: str,
    *,
    category: str | None = None,
    include_medications: bool = False,
    newest_first: bool = False,
    plain: bool = False,
    history_since: date | None = None,
    history: bool = False,
) -> dict[str, str]:
    """The search the loader sends for a type. `history`: the MedicationRequest search for
    stopped and completed orders, authored on or after `history_since` when given. `plain`
    drops the optional parameters (`_include`, `_sort`, `_elements`, `authoredon`), for a
    server that refused them. `newest_first`
    asks Observations by date, newest first: when paging stops at the cap, the pages read
    then hold the latest values and what is missing is the oldest history."""
    params = {"patient": patient_id}
    if category:
        params["category"] = category
    if resource_type in SORTED_TYPES and newest_first and not plain:
        params["_sort"] = "-date"
    if resource_type == "MedicationRequest":
        params["status"] = MEDICATION_HISTORY_STATUSES if history else MEDICATION_REQUEST_STATUSES
        if history and history_since is not None and not plain:
            params["authoredon"] = f"ge{history_since.isoformat()}"
        if include_medications and not plain:
            params["_include"] = MEDICATION_INCLUDE
    if resource_type == "DocumentReference":
        if not plain:
            params["_sort"] = "-date"
            params["_elements"] = DOCUMENT_ELEMENTS
        params["_count"] = str(RECENT_DOCUMENTS)
    else:
        params["_count"] = str(SEARCH_COUNT)
    return params


@dataclass(frozen=True, kw_only=True)
class _Fetch:
    """One GET of a round, as a URL relative to the base (a batch entry or a direct GET)."""

    purpose: Literal["patient", "encounter", "search", "medication", "medications"]
    resource_type: str
    url: str
    #: What messages call this search: "Observation (laboratory)"; the type by default.
    label: str = ""
    page: int = 1
    #: A plainer URL to try once if the server refuses this one (unsupported parameters).
    fallback_url: str | None = None
    retried: bool = False
    #: For `medications` (an `_id` search): the ids, read one by one if the search fails.
    ids: tuple[str, ...] = ()
    #: The search asked `_sort=-date` and, as far as its pages show, the server honoured it.
    newest_first: bool = False
    #: The search for stopped and completed orders: its shortfalls leave the current
    #: orders complete, and what it reads is kept only within the window.
    history: bool = False
    #: The last page to follow (None: the loader's max_pages).
    last_page: int | None = None
    #: The oldest-first twin of a newest-first search (`both_ends`): read from the other
    #: end of the same list at the same time, so that a list of up to two pages (or, where
    #: the whole list fits in `max_pages`, any list) needs half the rounds.
    twin: bool = False
    #: The batch this entry travels in: "" for the chart's batch; a both-ends search and its
    #: twin get one of their own, sent at the same time (the server works on them in
    #: parallel, and the app validates the first answer while the others are on the way).
    group: str = ""


@dataclass(frozen=True, kw_only=True)
class _Outcome:
    status: int  # 0: an answer that was not what was asked for
    resource: FHIRResource | None = None
    #: A temporary failure that nothing has retried yet (a batch entry's 429/5xx).
    retryable: bool = False
    #: On the direct path, what the client raised (kept to re-raise for the Patient).
    error: UpstreamError | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and self.resource is not None


class _Loader:
    def __init__(
        self,
        client: FHIRClient,
        *,
        patient_id: str,
        encounter_id: str | None,
        granted: frozenset[str],
        max_pages: int,
        use_batch: bool,
        include_medications: bool,
        sort_newest: bool = False,
        required_search: Mapping[str, tuple[str, ...]] | None = None,
        history_since: date | None = None,
        history_by_date: bool = False,
        both_ends: bool = False,
    ) -> None:
        self.client = client
        self.patient_id = patient_id
        self.encounter_id = encounter_id
        self.granted = granted
        self.max_pages = max_pages
        self.use_batch = use_batch
        self.include_medications = include_medications
        self.sort_newest = sort_newest
        self.required_search = dict(required_search or {})
        #: Stopped and completed orders authored since then are read (None: not asked for).
        self.history_since = history_since
        #: The server filters them by `authoredon` (else one page, filtered here).
        self.history_by_date = history_by_date
        self.found: dict[str, list[FHIRResource]] = {t: [] for t in SNAPSHOT_TYPES}
        self.problems: list[SnapshotProblem] = []
        self.medication_ids: set[str] = set()
        self.seen_urls: set[str] = set()
        self.rounds = 0
        self.other_patient: Counter[str] = Counter()
        #: Resources naming their patient only by identifier: judged once the Patient is read.
        self._by_identifier: list[tuple[str, FHIRResource]] = []
        self.patient_resource: FHIRResource | None = None
        self.read_counts: Counter[str] = Counter()
        self._arrived: list[FHIRResource] = []
        self._validator = ResourceValidator()
        self._pool: ThreadPoolExecutor | None = None
        # Batches run here (a batch that falls back to separate GETs waits on `_pool`).
        self._runner = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fhir-round")
        #: Read newest-first searches from both ends at once (where the server sorts). Not
        #: under a cap of one page per search: the oldest-first page would be a second one.
        self.both_ends = both_ends and sort_newest and max_pages >= 2
        #: This round's pages of the both-ends searches, by label: "newest" and "oldest".
        self._stash: dict[str, dict[str, tuple[_Fetch, FHIRResource, int]]] = {}
        #: Labels whose oldest-first twin was dropped: their newest-first chain goes on alone.
        self._alone: set[str] = set()
        #: Ids read per label by both ends (to know when they have met).
        self._label_ids: dict[str, set[str]] = {}
        #: (type, id) already kept: a resource read twice is validated once.
        self._kept_ids: set[tuple[str, str]] = set()
        #: Where each kept resource came from (round, request, position): the snapshot keeps
        #: the order of the requests, whatever order their answers arrived in.
        self._order: dict[int, tuple[int, int, int]] = {}
        self._position: tuple[int, int] = (0, 0)
        self._counter = 0

    # -- running -------------------------------------------------------------------------

    def run(self) -> None:
        pending = self._initial()
        try:
            while pending:
                self.rounds += 1
                following: list[_Fetch] = []
                # Each answer is handled, and its resources validated, as it arrives,
                # while the round's other requests are still on the wire.
                for indexes, outcomes in self._execute(pending):
                    for i, outcome in zip(indexes, outcomes, strict=True):
                        self._position = (self.rounds, i)
                        following += self._handle(pending[i], outcome)
                    self._validate_arrived()
                following += self._follow_both_ends(pending)
                following += self._medication_fetches()
                pending = following
        finally:
            self._runner.shutdown(wait=True, cancel_futures=True)
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
        self._position = (self.rounds + 1, 0)
        self._judge_by_identifier()
        self._validate_arrived()

    def _judge_by_identifier(self) -> None:
        """Keep the identifier-only resources whose identifier is the launch patient's."""
        keys = identifier_keys((self.patient_resource or {}).get("identifier"))
        waiting, self._by_identifier = self._by_identifier, []
        for rtype, resource in waiting:
            if matches_identifiers(resource, PATIENT_FIELD[rtype], keys):
                self._keep(rtype, [resource])
            else:
                self.other_patient[rtype] += 1

    def _validate_arrived(self) -> None:
        arrived, self._arrived = self._arrived, []
        self._validator.add(arrived)

    def _initial(self) -> list[_Fetch]:
        fetches: list[_Fetch] = []
        if "Patient" in self.granted:
            fetches.append(
                _Fetch(purpose="patient", resource_type="Patient", url=f"Patient/{self.patient_id}")
            )
        if self.encounter_id and "Encounter" in self.granted:
            if _ID.fullmatch(self.encounter_id):
                fetches.append(
                    _Fetch(
                        purpose="encounter",
                        resource_type="Encounter",
                        url=f"Encounter/{self.encounter_id}",
                    )
                )
            else:
                self._problem(
                    "search_failed", "Encounter", "the launch's encounter id is not valid"
                )
        for rtype, category in SEARCHES:
            if rtype not in self.granted:
                continue
            url = self._search_url(rtype, category, plain=False)
            plain = self._search_url(rtype, category, plain=True)
            missing = [
                p for p in self.required_search.get(rtype, ()) if f"{p}=" not in plain.split("?")[1]
            ]
            if missing:
                # This EHR refuses the search without them (quirks profile): say so, do not ask.
                self._problem(
                    "search_failed",
                    rtype,
                    f"{rtype} search needs {', '.join(missing)} on this EHR; not sent",
                )
                continue
            label = f"{rtype} ({category})" if category else rtype
            newest_first = self.sort_newest and rtype in SORTED_TYPES
            both = self.both_ends and newest_first
            fetches.append(
                _Fetch(
                    purpose="search",
                    resource_type=rtype,
                    label=label,
                    url=url,
                    fallback_url=plain if plain != url else None,
                    newest_first=newest_first,
                    group=label if both else "",
                )
            )
            if both:
                fetches.append(
                    _Fetch(
                        purpose="search",
                        resource_type=rtype,
                        label=label,
                        url=self._search_url(rtype, category, plain=False, oldest_first=True),
                        twin=True,
                        group=label,
                    )
                )
        if self.history_since is not None and any(
            f.resource_type == "MedicationRequest" and f.purpose == "search" for f in fetches
        ):
            fetches.append(self._history_fetch())
        return fetches

    def _history_fetch(self) -> _Fetch:
        def url(*, plain: bool) -> str:
            params = search_params(
                "MedicationRequest",
                self.patient_id,
                include_medications=self.include_medications,
                plain=plain,
                history=True,
                history_since=self.history_since if self.history_by_date else None,
            )
            return f"MedicationRequest?{urlencode(params)}"

        asked, plain = url(plain=False), url(plain=True)
        return _Fetch(
            purpose="search",
            resource_type="MedicationRequest",
            label=HISTORY_LABEL,
            url=asked,
            fallback_url=plain if plain != asked else None,
            history=True,
            last_page=None if self.history_by_date else 1,
        )

    def _search_url(
        self, rtype: str, category: str | None, *, plain: bool, oldest_first: bool = False
    ) -> str:
        params = search_params(
            rtype,
            self.patient_id,
            category=category,
            include_medications=self.include_medications,
            newest_first=self.sort_newest,
            plain=plain,
        )
        if oldest_first and "_sort" in params:
            params["_sort"] = "date"
        return f"{rtype}?{urlencode(params)}"

    def _pool_for(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="fhir-load")
        return self._pool

    def _execute(self, fetches: list[_Fetch]) -> Iterator[tuple[list[int], list[_Outcome]]]:
        """The round's requests, all sent at once; (fetch indexes, outcomes) per request,
        in the order they complete."""
        pool = self._pool_for()
        requests: dict[Future[list[_Outcome]], list[int]] = {}
        groups: dict[str, list[int]] = {}
        for i, fetch in enumerate(fetches):
            # HAPI-style next links are the base itself plus a query (`[base]?_getpages=…`);
            # a batch entry cannot express that, so such pages go directly, alongside.
            if not self.use_batch or not fetch.url or fetch.url.startswith("?"):
                requests[pool.submit(self._alone_request, fetch)] = [i]
            else:
                groups.setdefault(fetch.group, []).append(i)
        for indexes in groups.values():
            batch = [fetches[i] for i in indexes]
            requests[self._runner.submit(self._batch, batch)] = indexes
        for done in as_completed(requests):
            yield requests[done], done.result()

    def _alone_request(self, fetch: _Fetch) -> list[_Outcome]:
        return [self._direct(fetch)]

    def _batch(self, fetches: list[_Fetch]) -> list[_Outcome]:
        """One batch of the round (on the round runner's thread)."""
        if not self.use_batch:
            return list(self._pool_for().map(self._direct, fetches))
        try:
            responses = self.client.batch([BatchRequest(url=f.url) for f in fetches])
        except (RelaunchRequired, ChartTooLarge):
            raise
        except FatalUpstreamError:
            # The statement said batch but the server refused it (some gateways do):
            # the same requests, separately, from here on.
            log.warning("FHIR batch refused; loading the chart with separate requests")
            self.use_batch = False
            return list(self._pool_for().map(self._direct, fetches))
        outcomes = [
            _Outcome(
                status=response.status,
                resource=response.resource,
                retryable=response.status in _TEMPORARY,
            )
            for response in responses
        ]
        searches = [i for i, f in enumerate(fetches) if f.purpose == "search"]
        if len(searches) > 1 and all(outcomes[i].status in _NO_SEARCH_IN_BATCH for i in searches):
            # Some servers take reads but not searches inside a batch: search directly.
            log.warning("FHIR batch refused every search; searching with separate requests")
            self.use_batch = False
            again = self._pool_for().map(self._direct, [fetches[i] for i in searches])
            for i, outcome in zip(searches, again, strict=True):
                outcomes[i] = outcome
        return outcomes

    def _direct(self, fetch: _Fetch) -> _Outcome:
        try:
            # `?…` is a page of the base itself (`[base]?_getpages=…`): no slash before it.
            separator = "" if fetch.url.startswith("?") else "/"
            resource = self.client.get_url(f"{self.client.base_url}{separator}{fetch.url}")
        except (RelaunchRequired, ChartTooLarge):
            # Too large: the clinician is told so, rather than shown a chart with a hole.
            raise
        except FHIRRequestRefused as exc:
            return _Outcome(status=exc.status, error=exc)
        except TemporaryUpstreamError as exc:
            # The client has already retried with backoff; do not retry again.
            return _Outcome(status=503, error=exc)
        except FatalUpstreamError as exc:
            return _Outcome(status=0, error=exc)
        return _Outcome(status=200, resource=resource)

    # -- answers ---------------------------------------------------------------------------

    def _handle(self, fetch: _Fetch, outcome: _Outcome) -> list[_Fetch]:
        if not outcome.ok:
            return self._failed(fetch, outcome)
        resource = outcome.resource
        assert resource is not None
        expected = "Bundle" if fetch.purpose in ("search", "medications") else fetch.resource_type
        if resource.get("resourceType") != expected:
            return self._failed(fetch, _Outcome(status=0))
        if fetch.purpose in ("patient", "encounter"):
            if fetch.purpose == "patient":
                self.patient_resource = resource
            self._arrived.append(resource)
        elif fetch.purpose == "medication":
            self._add("Medication", [resource])
        else:
            return self._page(fetch, resource)
        return []

    def _page(self, fetch: _Fetch, bundle: FHIRResource) -> list[_Fetch]:
        rtype, label = fetch.resource_type, fetch.label or fetch.resource_type
        if fetch.twin:
            # Kept aside until the round is over: used only if both ends can meet.
            self._stash.setdefault(label, {})["oldest"] = (fetch, bundle, self._position[1])
            return []
        matches, includes = split_search_bundle(bundle)
        matches = [r for r in matches if r.get("resourceType") == rtype]
        self.read_counts[label] += len(matches)
        if fetch.history:
            matches = [r for r in matches if self._within_history(r)]
        if fetch.newest_first and fetch.page == 1 and not _self_link_kept_sort(bundle):
            log.info("FHIR search %s: the server did not apply _sort; pages are unordered", label)
            fetch = replace(fetch, newest_first=False)
            self._alone.add(label)
        self._add(rtype, matches)
        if rtype == "MedicationRequest":
            self._add("Medication", [r for r in includes if r.get("resourceType") == "Medication"])
        if fetch.group and label not in self._alone:
            self._label_ids.setdefault(label, set()).update(
                str(r["id"]) for r in matches if isinstance(r.get("id"), str)
            )
            self._stash.setdefault(label, {})["newest"] = (fetch, bundle, self._position[1])
            return []
        return self._next_page(fetch, bundle)

    def _next_page(self, fetch: _Fetch, bundle: FHIRResource) -> list[_Fetch]:
        """The fetch of the search's next page, if it is to be read."""
        rtype, label = fetch.resource_type, fetch.label or fetch.resource_type
        link = next_link(bundle)
        if link is None or rtype == "DocumentReference":
            # DocumentReference: the most recent few are wanted, not the whole history.
            return []
        if fetch.page >= (fetch.last_page or self.max_pages):
            if fetch.history:
                self._problem(
                    "history_incomplete",
                    rtype,
                    f"{label}: read {fetch.page} page(s) of past orders; older ones "
                    "were not read (current orders are complete)",
                )
                return []
            total = bundle.get("total")
            of = f" of {total}" if isinstance(total, int) else ""
            order = (
                "read newest first: the oldest were not read"
                if fetch.newest_first
                else "not read newest first: the latest may be among those not read"
            )
            self.problems.append(
                SnapshotProblem(
                    code="truncated",
                    resource_type=rtype,
                    detail=f"{label}: read {self.read_counts[label]}{of} in {fetch.page} "
                    f"page(s); the rest was not read (max_pages={self.max_pages}); {order}",
                    newest_first=fetch.newest_first,
                )
            )
            return []
        try:
            relative = self.client.relative_to_base(link)
        except FatalUpstreamError:
            self.problems.append(
                SnapshotProblem(
                    code="truncated",
                    resource_type=rtype,
                    detail=f"{label}: the next page is on another server; not followed",
                    newest_first=fetch.newest_first,
                )
            )
            return []
        if relative in self.seen_urls:
            log.warning("FHIR search %s: next link repeats a page; stopping", label)
            return []
        self.seen_urls.add(relative)
        return [replace(fetch, url=relative, page=fetch.page + 1, fallback_url=None, retried=False)]

    def _follow_both_ends(self, pending: list[_Fetch]) -> list[_Fetch]:
        """After a round: for each search read from both ends, whether the two ends have
        met (the list is complete), may meet within `max_pages`, or cannot (then the
        oldest-first page is dropped, and the newest-first search goes on alone, so that
        what a truncated list lacks is still its oldest part)."""
        following: list[_Fetch] = []
        stash, self._stash = self._stash, {}
        for label, ends in stash.items():
            newest, oldest = ends.get("newest"), ends.get("oldest")
            if newest is None:
                continue  # its page failed (a problem says so) or it was read alone
            fetch, bundle, _ = newest
            if oldest is None or label in self._alone:
                self._alone.add(label)
                following += self._next_page(replace(fetch, group=""), bundle)
                continue
            twin, twin_bundle, index = oldest
            if next_link(bundle) is None:
                continue  # the newest-first page held the whole list
            matches = [
                r
                for r in split_search_bundle(twin_bundle)[0]
                if r.get("resourceType") == fetch.resource_type
            ]
            ids = self._label_ids.setdefault(label, set())
            twin_ids = {str(r["id"]) for r in matches if isinstance(r.get("id"), str)}
            total = bundle.get("total")
            complete = isinstance(total, int) and len(ids | twin_ids) >= total
            page_size = max(1, len(split_search_bundle(bundle)[0]))
            reachable = (
                isinstance(total, int)
                and twin_bundle.get("total") == total
                and total <= self.max_pages * page_size
                and fetch.page + twin.page < self.max_pages + 1
                and _self_link_kept_sort(twin_bundle)
            )
            if not (complete or next_link(twin_bundle) is None or reachable):
                log.info("FHIR search %s: both ends cannot meet; read newest first only", label)
                self._alone.add(label)
                following += self._next_page(replace(fetch, group=""), bundle)
                continue
            self._position = (self.rounds, index)
            self.read_counts[label] += len(twin_ids - ids)
            ids |= twin_ids
            self._add(fetch.resource_type, matches)
            if complete or next_link(twin_bundle) is None:
                continue
            for end, end_bundle in ((fetch, bundle), (twin, twin_bundle)):
                link = next_link(end_bundle)
                assert link is not None
                try:
                    relative = self.client.relative_to_base(link)
                except FatalUpstreamError:
                    self._alone.add(label)  # a page on another server: newest first alone
                    following += self._next_page(replace(fetch, group=""), bundle)
                    break
                following.append(replace(end, url=relative, page=end.page + 1, retried=False))
        return following

    def _failed(self, fetch: _Fetch, outcome: _Outcome) -> list[_Fetch]:
        if fetch.twin:
            # Only a shortcut (never retried): the newest-first search reads the list alone.
            log.info("FHIR search %s: the oldest-first page failed; not needed", fetch.label)
            self._alone.add(fetch.label)
            return []
        if outcome.retryable and not fetch.retried:
            return [replace(fetch, retried=True)]
        if fetch.fallback_url and outcome.status not in _TEMPORARY and outcome.status != 401:
            log.info(
                "FHIR search %s refused; retrying without optional parameters", fetch.resource_type
            )
            return [
                replace(
                    fetch,
                    url=fetch.fallback_url,
                    fallback_url=None,
                    retried=False,
                    newest_first=False,  # the plain search has no _sort
                    # nor `authoredon`: one page of past orders, the window applied here
                    last_page=1 if fetch.history else fetch.last_page,
                )
            ]
        status = f"HTTP {outcome.status}" if outcome.status else "an unexpected answer"
        if fetch.purpose == "patient":
            raise _patient_error(outcome)
        # (A 401 on one entry of an accepted batch is a refusal of that entry, not of the
        # token: the batch itself got through. A refused token raises in the client.)
        if fetch.purpose == "encounter":
            self._problem(
                "search_failed", "Encounter", f"the launch's Encounter could not be read ({status})"
            )
        elif fetch.purpose == "search" and fetch.history:
            self._problem(
                "history_incomplete",
                fetch.resource_type,
                f"{fetch.label}: search failed ({status}); stopped orders may be missing "
                "(current orders are unaffected)",
            )
        elif fetch.purpose == "search":
            label = fetch.label or fetch.resource_type
            detail = (
                f"{label} search failed ({status})"
                if fetch.page == 1
                else f"{label}: page {fetch.page} failed ({status}); the list is incomplete"
            )
            self._problem("search_failed", fetch.resource_type, detail)
        elif fetch.purpose == "medications":
            # The server may not search Medication by `_id`: read them one by one instead.
            return [
                _Fetch(purpose="medication", resource_type="Medication", url=f"Medication/{mid}")
                for mid in fetch.ids
            ]
        # A failed Medication read shows up as an unresolved reference in the snapshot.
        return []

    def _add(self, rtype: str, resources: list[FHIRResource]) -> None:
        kept: list[FHIRResource] = []
        for resource in resources:
            field = PATIENT_FIELD.get(rtype)
            if field is not None:
                judged = verdict(
                    resource,
                    field,
                    patient_id=self.patient_id,
                    on_base=self.client.is_on_base,
                    relative=self.client.relative_to_base,
                )
                if judged is Verdict.BY_IDENTIFIER:
                    self._by_identifier.append((rtype, resource))
                    continue
                if judged is Verdict.OTHER:
                    # A server bug, but a dangerous one: never show another patient's data.
                    self.other_patient[rtype] += 1
                    continue
            kept.append(resource)
        self._keep(rtype, kept)

    def _keep(self, rtype: str, resources: list[FHIRResource]) -> None:
        kept: list[FHIRResource] = []
        for resource in resources:
            rid = resource.get("id")
            if isinstance(rid, str):
                # Pages, both ends and `_include` can bring a resource twice: keep the first.
                if (rtype, rid) in self._kept_ids:
                    continue
                self._kept_ids.add((rtype, rid))
            if rtype == "DocumentReference":
                resource = _without_attachment_data(resource)
            self._counter += 1
            self._order[id(resource)] = (*self._position, self._counter)
            kept.append(resource)
        self.found[rtype].extend(kept)
        self._arrived.extend(kept)
        if rtype == "Medication":
            self.medication_ids.update(str(r["id"]) for r in kept if r.get("id"))

    def _within_history(self, order: FHIRResource) -> bool:
        """An order authored, or ending, within the window (a server that cannot filter
        by date sends older ones too)."""
        since = self.history_since
        ended: Any = order.get("dispenseRequest")
        for key in ("validityPeriod", "end"):  # not yet validated: any shape may come
            ended = ended.get(key) if isinstance(ended, Mapping) else None
        days = [parse_fhir_date(order.get("authoredOn")), parse_fhir_date(ended)]
        return since is None or any(d is not None and d >= since for d in days)

    def _problem(self, code: str, rtype: str, detail: str) -> None:
        self.problems.append(SnapshotProblem(code=code, resource_type=rtype, detail=detail))

    # -- medications -----------------------------------------------------------------------

    def _local_medication_id(self, reference: str) -> str | None:
        """The id of a `Medication/id` reference on this server (relative or absolute)."""
        if "://" in reference:
            if not self.client.is_on_base(reference):
                return None
            reference = self.client.relative_to_base(reference)
        parts = reference.split("/_history/")[0].split("/")
        if len(parts) == 2 and parts[0] == "Medication" and _ID.fullmatch(parts[1]):
            return parts[1]
        return None

    def _medication_fetches(self) -> list[_Fetch]:
        """Reads for the referenced Medications that no answer has brought yet."""
        if "Medication" not in self.granted:
            return []
        wanted: list[str] = []
        for request in (*self.found["MedicationRequest"], *self.found["MedicationStatement"]):
            ref = _reference(request.get("medicationReference"))
            if ref is None or ref.startswith("#"):
                continue  # contained: already here
            mid = self._local_medication_id(ref)
            if mid is None or mid in self.medication_ids:
                continue
            self.medication_ids.add(mid)
            wanted.append(mid)
        if not wanted:
            return []
        if self.use_batch:
            return [
                _Fetch(purpose="medication", resource_type="Medication", url=f"Medication/{mid}")
                for mid in wanted
            ]
        # Without batch, one `_id` search costs one request where reads would cost one each.
        chunks = [
            wanted[i : i + MEDICATION_IDS_PER_SEARCH]
            for i in range(0, len(wanted), MEDICATION_IDS_PER_SEARCH)
        ]
        return [
            _Fetch(
                purpose="medications",
                resource_type="Medication",
                url="Medication?" + urlencode({"_id": ",".join(chunk), "_count": str(len(chunk))}),
                ids=tuple(chunk),
            )
            for chunk in chunks
        ]

    # -- the snapshot ----------------------------------------------------------------------

    def snapshot(self, *, not_granted: tuple[str, ...], request_count: int) -> ChartSnapshot:
        problems = list(self.problems)
        for rtype, count in sorted(self.other_patient.items()):
            problems.append(
                SnapshotProblem(
                    code="wrong_patient",
                    resource_type=rtype,
                    detail=f"{count} {rtype} resource(s) not for this patient were dropped "
                    "(another patient or server, a group, or no patient reference)",
                    count=count,
                )
            )
        problems += self._validator.problems()
        # In the order of the requests (answers arrive in any order); Patient and Encounter
        # (not in `_order`) first.
        order = self._order
        valid = sorted(self._validator.valid, key=lambda r: order.get(id(r), (0, 0, 0)))
        snap = assemble_snapshot(
            valid,
            patient_id=self.patient_id,
            encounter_id=self.encounter_id,
            problems=problems,
            not_granted=not_granted,
            request_count=request_count,
        )
        unresolved = sum(
            1
            for mr in (*snap.of_type("MedicationRequest"), *snap.of_type("MedicationStatement"))
            if (ref := _reference(mr.get("medicationReference"))) is not None
            and snap.resolve(ref, within=mr) is None
        )
        if unresolved:
            why = " (Medication not granted)" if "Medication" not in self.granted else ""
            snap = replace(
                snap,
                problems=(
                    *snap.problems,
                    SnapshotProblem(
                        code="unresolved_reference",
                        resource_type="Medication",
                        detail=f"{unresolved} medication order(s) or statement(s) name a "
                        f"Medication that could not be read{why}",
                        count=unresolved,
                    ),
                ),
            )
        return snap


def _self_link_kept_sort(bundle: FHIRResource) -> bool:
    """False when the page's `self` link shows the search the server ran, without `_sort`
    (R4: the self link carries the parameters actually used). No such link: trusted."""
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "self":
            url = link.get("url")
            if isinstance(url, str) and "?" in url:
                return "_sort=" in url.split("?", 1)[1]
    return True


def _reference(value: Any) -> str | None:
    """`value.reference` if `value` is a Reference with a string reference (data is unvalidated)."""
    ref = value.get("reference") if isinstance(value, dict) else None
    return ref if isinstance(ref, str) else None


def _patient_error(outcome: _Outcome) -> UpstreamError:
    if outcome.error is not None:
        return outcome.error
    status = outcome.status
    if status == 401:
        return RelaunchRequired()
    if status in (404, 410):
        return FHIRRequestRefused(
            "The patient in the launch context was not found on the EHR.", status=status
        )
    if status in _TEMPORARY:
        return TemporaryUpstreamError(
            f"The EHR's FHIR server could not read the patient right now (HTTP {status})."
        )
    if status:
        return FHIRRequestRefused(
            f"The EHR's FHIR server refused to read the patient (HTTP {status}).", status=status
        )
    return FatalUpstreamError(
        "The EHR's FHIR server answered the Patient read with something else."
    )


def _without_attachment_data(document: FHIRResource) -> FHIRResource:
    """The DocumentReference without inline attachment bytes (metadata only; a note is PHI)."""
    content = document.get("content")
    if not isinstance(content, list) or not any(
        isinstance(c, dict) and isinstance(c.get("attachment"), dict) and "data" in c["attachment"]
        for c in content
    ):
        return document
    stripped = []
    for item in content:
        if isinstance(item, dict) and isinstance(item.get("attachment"), dict):
            attachment = {k: v for k, v in item["attachment"].items() if k != "data"}
            item = {**item, "attachment": attachment}
        stripped.append(item)
    return {**document, "content": stripped}


def medication_history_since(today: date) -> date:
    """The first day of the window of stopped and completed orders read (12 months)."""
    index = today.year * 12 + today.month - 1 - MEDICATION_HISTORY_MONTHS
    year, month = divmod(index, 12)
    return date(year, month + 1, min(today.day, 28))


def load_snapshot(
    client: FHIRClient,
    *,
    patient_id: str,
    encounter_id: str | None,
    readable_types: Collection[str] | None,
    max_pages: int = 20,
    prefer_batch: bool = True,
    sort_newest: bool | None = None,
    quirks: QuirksProfile | None = None,
    configured_quirks: str | None = None,
    today: date | None = None,
    both_ends: bool = True,
) -> ChartSnapshot:
    """The launch's chart: one batch per round where the server supports batch, else ≤ 6 GETs
    at a time; `next` pages followed up to `max_pages` per type.

    `readable_types`: the types the granted scopes allow (None or "*": all). The others are not
    asked for and are listed in `not_granted`. Raises only when the Patient cannot be read
    (or the whole server fails); every other failure is a problem in the snapshot.
    `sort_newest`: ask Observations newest first; None: as the quirks profile says (by
    default, where the statement declares `_sort`). `quirks`: the EHR family's profile;
    None: `configured_quirks` (the site file's choice for the issuer), else detected from
    the CapabilityStatement. `today`: where the window of stopped and completed orders
    ends (default: today, UTC). `both_ends`: where Observations are read newest first, read
    each list from its oldest end too, at the same time, in a batch of its own.
    """
    if max_pages < 1:
        raise ValueError("max_pages must be at least 1")
    if not _ID.fullmatch(patient_id or ""):
        raise FatalUpstreamError("The EHR's launch context has no valid patient id.")
    start = client.request_count
    try:
        capabilities = client.capabilities()
    except RelaunchRequired:
        raise
    except FatalUpstreamError:
        # No usable statement: assume the least (separate searches, no _include).
        log.warning("FHIR capability statement unusable; loading without batch")
        capabilities = {}
    # A type the server does not offer is neither asked for nor "not granted".
    offered = tuple(
        t
        for t in READABLE_TYPES
        if t not in OPTIONAL_TYPES
        or not capabilities
        or supports_interaction(capabilities, t, "search-type")
    )
    # "*" stands for a wildcard scope (`patient/*.rs`).
    everything = readable_types is None or "*" in readable_types
    granted = frozenset(t for t in offered if everything or t in (readable_types or ()))
    not_granted = tuple(t for t in offered if t not in granted)
    profile = quirks or catalog().choose(configured=configured_quirks, capabilities=capabilities)
    loader = _Loader(
        client,
        patient_id=patient_id,
        encounter_id=encounter_id,
        granted=granted,
        max_pages=max_pages,
        use_batch=prefer_batch and supports_batch(capabilities),
        include_medications="Medication" in granted
        and profile.use_include(
            supports_include(capabilities, "MedicationRequest", MEDICATION_INCLUDE)
        ),
        sort_newest=profile.sort_newest(supports_sort(capabilities, "Observation", "date"))
        if sort_newest is None
        else sort_newest,
        required_search=profile.required_search(),
        history_since=medication_history_since(today or datetime.now(UTC).date()),
        history_by_date=supports_search_param(capabilities, "MedicationRequest", "authoredon"),
        both_ends=both_ends,
    )
    loader.run()
    snapshot = loader.snapshot(not_granted=not_granted, request_count=client.request_count - start)
    log.info(
        "chart snapshot: %d request(s) in %d round(s), batch=%s, quirks=%s, %d problem(s)",
        snapshot.request_count,
        loader.rounds,
        loader.use_batch,
        profile.id,
        len(snapshot.problems),
    )
    return snapshot

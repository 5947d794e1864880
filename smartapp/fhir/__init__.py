"""FHIR R4 for the app: the only HTTP client to the EHR, and the chart snapshot it loads.

Knows FHIR, not Flask and not OAuth (a `TokenProvider` hands it the bearer token).
https://hl7.org/fhir/R4/http.html

    client.py        FHIRClient: timeouts, retries, 401 refresh, typed errors, batch
    capabilities.py  what a CapabilityStatement supports (batch, _include)
    chart.py         load_snapshot: the launch's chart in one batch per round
    parsing.py       tolerant R4B validation; build/assemble a ChartSnapshot
    snapshot.py      ChartSnapshot, the hand-off to suggestions/
    readers.py       pure readers over FHIR JSON (codes, dates, values, names)
    cache.py         SnapshotCache: the per-launch snapshot in the server-side store
    auth.py          TokenProvider, the seam to smart/
"""

"""A clinician's stable place in a phased rollout: the one placement hash of the app.

Both sources of rollout rules (the site file's `[rollout]` and the dashboard's rules) place
a clinician with this function, so that 50 % in one and 50 % in the other reach the same
half of the clinicians instead of stacking to a quarter. The place is
`sha256(salt|site|kind|fhirUser) mod 10000`, compared with a share in basis points; it does
not depend on the share, so raising a rollout from 30 % to 50 % keeps everyone who already
had it. Python's `hash()` is salted per process and would reshuffle clinicians on every
restart: never use it here.
"""

from __future__ import annotations

import hashlib

#: Changing this salt reshuffles every clinician in every partial rollout.
ROLLOUT_SALT = "smartapp-rollout-v1"
BUCKETS = 10_000
#: A clinician's arm in a partial rollout, as a saved note records it (the concurrent
#: control: smartapp.admin.control).
INSIDE, OUTSIDE = "inside", "outside"


def bucket(*, site: str, kind: str, fhir_user: str) -> int:
    """The clinician's place (0–9999) in the rollout of `kind` at `site`.

    `site` and `fhir_user` must already be normalised by the caller (the issuer without a
    trailing slash, the fhirUser in its canonical form), so that every caller agrees.
    """
    key = "|".join((ROLLOUT_SALT, site, kind, fhir_user))
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def placed_within(*, site: str, kind: str, fhir_user: str, share_bp: int) -> bool:
    """Whether the clinician falls inside a rollout of `share_bp` basis points (0–10000)."""
    if share_bp >= BUCKETS:
        return True
    if share_bp <= 0:
        return False
    return bucket(site=site, kind=kind, fhir_user=fhir_user) < share_bp

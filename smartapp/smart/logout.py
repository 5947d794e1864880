"""Logout: the launch session ends on the server, and its tokens at the EHR where it can revoke.

The row (and with it the encrypted tokens, and their copy held for pending notes) is
deleted first, so the session is over whatever the EHR answers; then the refresh token,
else the access token, is revoked at the issuer's `revocation_endpoint` (RFC 7009) when
its SMART configuration advertises one.
https://www.rfc-editor.org/rfc/rfc7009
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from smartapp.errors import AppError
from smartapp.smart.crypto import DecryptionFailed
from smartapp.smart.models import HeldGrant, LaunchSession
from smartapp.smart.services import SMARTServices

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EndedLaunch:
    session_id: str
    iss: str
    fhir_user: str | None
    patient_id: str | None
    #: True when the EHR took the revocation; False when it has no endpoint or refused.
    revoked: bool


def end_launch(services: SMARTServices, session_id: str, *, purpose: str) -> EndedLaunch | None:
    """End the session with this id (the cookie's or the window token's, see
    `session.session_id_for`); None when there is none (already ended or expired)."""
    with services.db.session() as s:
        row = s.get(LaunchSession, session_id)
        if row is None or row.purpose != purpose:
            return None
        s.delete(row)
        # The clinician ended the grant: a note still pending waits for their next launch
        # rather than go out with the tokens they asked to end.
        held = s.get(HeldGrant, session_id)
        if held is not None:
            s.delete(held)
    token, hint = _token_to_revoke(services, row)
    revoked = False
    if token is not None and row.iss in services.settings.allowed_issuers:
        try:
            endpoint = services.discover(row.iss).revocation_endpoint
        except AppError as exc:
            log.warning("logout: discovery failed (%s); tokens not revoked", exc.code)
            endpoint = None
        if endpoint is not None:
            revoked = services.client.revoke(endpoint, token=token, token_type_hint=hint)
    log.info("launch session ended by logout (purpose %s, revoked %s)", purpose, revoked)
    return EndedLaunch(
        session_id=row.id,
        iss=row.iss,
        fhir_user=row.fhir_user,
        patient_id=row.patient,
        revoked=revoked,
    )


def _token_to_revoke(services: SMARTServices, row: LaunchSession) -> tuple[str | None, str]:
    # Revoking the refresh token ends the grant (RFC 7009 §2.1: its access tokens too,
    # where the server supports it); without one, the access token is all there is.
    for ciphertext, hint in (
        (row.refresh_token_enc, "refresh_token"),
        (row.access_token_enc, "access_token"),
    ):
        if ciphertext is None:
            continue
        try:
            return services.cipher.decrypt(ciphertext), hint
        except DecryptionFailed:
            continue  # the key changed since the launch: nothing left to revoke with it
    return None, "refresh_token"

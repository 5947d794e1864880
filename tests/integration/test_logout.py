"""Integration (the app and the sandbox EHR on loopback, nothing patched): logout ends the
launch in the app and revokes its refresh token at the EHR (RFC 7009)."""

from __future__ import annotations

import requests
from sqlalchemy import select

from smartapp.smart.models import LaunchSession
from smartapp.smart.services import get_services

from .conftest import Launched


def test_logout_revokes_the_refresh_token_at_the_ehr(launched: Launched) -> None:
    app = launched.stack.app
    services = get_services(app)
    with services.db.session() as s:
        [row] = s.scalars(select(LaunchSession))
        assert row.refresh_token_enc is not None
        refresh_token = services.cipher.decrypt(row.refresh_token_enc)

    response = launched.api("POST", "/logout")
    assert response.status_code == 200
    assert response.json() == {"status": "signed_out", "revoked": True}
    assert launched.api("GET", "/api/context").status_code == 401

    # The EHR no longer honours the refresh token the app held.
    refreshed = requests.post(
        f"{launched.stack.ehr_url}/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": launched.stack.settings.client_id,
        },
        timeout=30,
    )
    assert refreshed.status_code == 400
    assert refreshed.json()["error"] == "invalid_grant"

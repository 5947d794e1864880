"""The sandbox EHR and the app running together on loopback: `smartapp sandbox`, tests, bench.

The EHR is published as `localhost` and the app as `127.0.0.1`, so that the sidebar
iframe is cross-site as in a real EHR (and the session cookie must be partitioned).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from flask import Flask

from smartapp import create_app
from smartapp.config import Settings, shipped
from smartapp.sandbox.ehr import create_ehr_app
from smartapp.sandbox.server import BackgroundServer


@dataclass(kw_only=True)
class Stack:
    ehr_server: BackgroundServer
    app_server: BackgroundServer
    ehr: Flask
    app: Flask
    settings: Settings

    @property
    def ehr_url(self) -> str:
        return self.ehr_server.url

    @property
    def app_url(self) -> str:
        return self.app_server.url

    @property
    def fhir_base(self) -> str:
        return f"{self.ehr_url}/fhir"

    def start(self) -> Stack:
        self.ehr_server.start()
        self.app_server.start()
        return self

    def stop(self) -> None:
        self.app_server.stop()
        self.ehr_server.stop()
        for close in self.app.extensions.get("smartapp.on_shutdown", []):
            close()
        self.app.extensions["smartapp.db"].dispose()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def build_stack(
    *,
    environ: Mapping[str, str] | None = None,
    ehr_port: int = 0,
    app_port: int = 0,
    latency_ms: int = 0,
    population_size: int = 24,
    access_token_lifetime: int = 3600,
    sandbox_data_dir: Path | None = None,
    ehr_manifest_overrides: Mapping[str, Any] | None = None,
    rewrite_urn_uuids: bool = False,
    imitate: str = "generic",
    cds_hooks: bool = False,
    documentation_history: bool = False,
) -> Stack:
    """Bind both servers, then build both apps (each needs the other's URL).

    `cds_hooks`: the EHR calls the app's `patient-view` hook when a chart opens, and the
    app trusts the EHR's request JWTs (its JWKS URL registered as SMARTAPP_CDS_CLIENTS would).
    """
    ehr_server = BackgroundServer("127.0.0.1", ehr_port, public_host="localhost")
    app_server = BackgroundServer("127.0.0.1", app_port, ident="smartapp")
    fhir_base = f"{ehr_server.url}/fhir"
    settings = Settings.from_env(environ, sandbox_issuer=fhir_base)
    manifest = dict(json.loads((shipped("launch.json")).read_text(encoding="utf-8")))
    manifest["client_id"] = settings.client_id
    if settings.private_key_path:
        manifest["token_endpoint_auth_method"] = "private_key_jwt"
        # The same registration serves SMART Backend Services (`smartapp baseline`): the
        # EHR checks its assertions against the app's JWKS URL.
        manifest["grant_types"] = [*manifest["grant_types"], "client_credentials"]
        manifest["scope"] += " system/Encounter.rs system/DocumentReference.rs"
    elif settings.client_secret:
        manifest.update(
            token_endpoint_auth_method="client_secret_basic", client_secret=settings.client_secret
        )
    manifest.update(ehr_manifest_overrides or {})
    ehr = create_ehr_app(
        data_dir=sandbox_data_dir or settings.instance_path / "sandbox",
        ehr_base_url=ehr_server.url,
        app_base_url=app_server.url,
        manifest=manifest,
        latency_ms=latency_ms,
        population_size=population_size,
        access_token_lifetime=access_token_lifetime,
        rewrite_urn_uuids=rewrite_urn_uuids,
        imitate=imitate,
        cds_services_url=f"{app_server.url}/cds-services" if cds_hooks else None,
        documentation_history=documentation_history,
    )
    app = create_app(settings)
    if cds_hooks:
        from smartapp.cdshooks.trust import CDSClient

        app.extensions["smartapp.cdshooks.trust"].register(
            CDSClient(
                iss=ehr_server.url,
                jwks_url=f"{ehr_server.url}/cds/jwks.json",
                fhir_servers=(fhir_base,),
            )
        )
    ehr_server.set_app(ehr)
    app_server.set_app(app)
    return Stack(ehr_server=ehr_server, app_server=app_server, ehr=ehr, app=app, settings=settings)

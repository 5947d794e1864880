"""`smartapp check ISS`: can this app be registered and launched against a FHIR server?

Reads the server's SMART configuration and CapabilityStatement (never with a token) and
reports, one line per requirement, ok / warn / FAIL and why it matters.
https://hl7.org/fhir/smart-app-launch/conformance.html and
https://hl7.org/fhir/R4/capabilitystatement.html

It is what IT runs before adding an issuer to SMARTAPP_ALLOWED_ISSUERS, so it does not
require the issuer to be allowed (it says whether it is). Exit status: 0 when the app can
be launched (warnings allowed), 1 when it cannot, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import requests

from smartapp.redirects import RedirectRefused, get_within_origin, origin_text

if TYPE_CHECKING:
    from smartapp.cdshooks.trust import CDSClient
    from smartapp.config import SettingValue
    from smartapp.siteconfig import Sources
    from smartapp.smart.discovery import SMARTConfiguration

Status = Literal["ok", "warn", "fail"]

#: Seconds to connect and to read, for every request the check sends.
DEFAULT_TIMEOUT = 10.0
WELL_KNOWN = "/.well-known/smart-configuration"
#: Types the loader reads by id only; the others it searches by patient.
READ_ONLY_TYPES = frozenset({"Patient", "Encounter", "Medication"})
#: Extra search parameters the loader sends per type (besides `patient` and `_count`).
EXTRA_SEARCH_PARAMS: Mapping[str, tuple[str, ...]] = {
    "Observation": ("category",),
    "MedicationRequest": ("status",),
}


class UsageError(Exception):
    """The command line is wrong (exit status 2)."""


@dataclass(frozen=True, kw_only=True)
class CheckLine:
    status: Status
    #: A stable identifier (`pkce`, `read:Patient`), for scripts reading `--json`.
    key: str
    what: str
    #: What the server publishes (never a token; nothing from a patient).
    detail: str
    why: str

    def to_json(self) -> dict[str, str]:
        return {
            "status": self.status,
            "key": self.key,
            "what": self.what,
            "detail": self.detail,
            "why": self.why,
        }


@dataclass(frozen=True, kw_only=True)
class AppProfile:
    """What this app needs from a server, from its configuration (launch.json, environment)."""

    client_id: str
    #: "public", "confidential-symmetric" or "confidential-asymmetric".
    client_auth: str
    scope: tuple[str, ...]
    allowed_issuers: tuple[str, ...]
    #: Types read by id, and types searched by patient, that the manifest's scopes cover.
    read_types: tuple[str, ...]
    search_types: tuple[str, ...]
    writes_documents: bool
    updates_documents: bool
    writes_provenance: bool
    #: The site file (SMARTAPP_CONFIG) and the quirks profile it names per issuer.
    site_file: str | None = None
    site_quirks: Mapping[str, str] = field(default_factory=dict)
    #: Why the site file could not be read (the app would refuse to start with it).
    site_file_error: str | None = None
    #: SMARTAPP_CDS_CLIENTS: the EHRs registered to call the CDS Hooks service.
    cds_clients_file: str | None = None
    cds_clients: tuple[CDSClient, ...] = ()
    cds_clients_error: str | None = None
    #: Every SMARTAPP_* setting with its value (a secret's never) and source, as `serve`
    #: would read them; `settings_error` why they would stop it (the ConfigError's words).
    settings: tuple[SettingValue, ...] = ()
    settings_error: str | None = None

    def quirks_for(self, iss: str) -> str | None:
        """The quirks profile the site file names for this issuer, if any."""
        from smartapp.config import normalize_issuer

        return self.site_quirks.get(normalize_issuer(iss))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AppProfile:
        """`from_sources` of exactly `environ` (no `.env` read) and the site file it names."""
        from smartapp.siteconfig import read_sources

        return cls.from_sources(read_sources(environ=environ))

    @classmethod
    def from_sources(cls, sources: Sources) -> AppProfile:
        """Reads the same names as `Settings.from_env`, but creates nothing on disk and
        refuses nothing: the check must run before the app is fully configured."""
        from smartapp.cdshooks.trust import load_clients
        from smartapp.config import (
            ConfigError,
            LaunchManifest,
            Settings,
            normalize_issuer,
            shipped,
        )
        from smartapp.fhir.chart import READABLE_TYPES
        from smartapp.smart.scopes import GrantedScopes

        environ = sources.environ
        manifest_path = Path(environ.get("SMARTAPP_LAUNCH_JSON") or shipped("launch.json"))
        manifest = LaunchManifest.load(manifest_path)
        scopes = GrantedScopes(manifest.scope)
        readable = scopes.readable_types()
        types = [t for t in READABLE_TYPES if "*" in readable or t in readable]
        if environ.get("SMARTAPP_PRIVATE_KEY"):
            client_auth = "confidential-asymmetric"
        elif environ.get("SMARTAPP_CLIENT_SECRET"):
            client_auth = "confidential-symmetric"
        else:
            client_auth = "public"
        issuers = (environ.get("SMARTAPP_ALLOWED_ISSUERS") or "").split(",")
        site_file, site_quirks, site_file_error = _site_quirks(sources)
        allowed = tuple(normalize_issuer(i) for i in issuers if i.strip())
        cds_file = environ.get("SMARTAPP_CDS_CLIENTS") or None
        cds_clients: tuple[CDSClient, ...] = ()
        cds_error = None
        try:
            cds_clients = load_clients(
                Path(cds_file) if cds_file else None, allowed_issuers=allowed
            )
        except ConfigError as exc:
            cds_error = str(exc)
        settings: tuple[SettingValue, ...] = ()
        settings_error = None
        try:
            # Validated as `serve` validates them, writing nothing (no instance folder made,
            # no secret key generated).
            settings = Settings.from_env(environ, create_instance=False).described()
        except ConfigError as exc:
            settings_error = str(exc)
        return cls(
            settings=settings,
            settings_error=settings_error,
            cds_clients_file=cds_file,
            cds_clients=cds_clients,
            cds_clients_error=cds_error,
            client_id=environ.get("SMARTAPP_CLIENT_ID") or manifest.client_id,
            client_auth=client_auth,
            scope=tuple(scopes),
            allowed_issuers=tuple(normalize_issuer(i) for i in issuers if i.strip()),
            read_types=tuple(t for t in types if t in READ_ONLY_TYPES),
            search_types=tuple(t for t in types if t not in READ_ONLY_TYPES),
            writes_documents=scopes.allows("DocumentReference", "c"),
            updates_documents=scopes.allows("DocumentReference", "u"),
            writes_provenance=scopes.allows("Provenance", "c"),
            site_file=site_file,
            site_quirks=site_quirks,
            site_file_error=site_file_error,
        )


def _site_quirks(sources: Sources) -> tuple[str | None, dict[str, str], str | None]:
    """(the site file's name, its quirks profile per issuer, why it could not be read)."""
    from smartapp.siteconfig import SiteConfigError

    path = sources.site_path
    if path is None:
        return None, {}, None
    try:
        site = sources.site()
    except SiteConfigError as exc:
        return path.name, {}, "; ".join(exc.errors[:3])
    named = {iss: config.quirks for iss, config in site.sites.items() if config.quirks}
    return path.name, named, None


@dataclass(kw_only=True)
class CheckReport:
    iss: str
    lines: list[CheckLine] = field(default_factory=list)
    #: The app's settings as it reads them (name, value or "(secret, set)", source).
    settings: tuple[SettingValue, ...] = ()

    def add(self, status: Status, key: str, what: str, detail: str, why: str) -> None:
        self.lines.append(CheckLine(status=status, key=key, what=what, detail=detail, why=why))

    def count(self, status: Status) -> int:
        return sum(1 for line in self.lines if line.status == status)

    @property
    def launchable(self) -> bool:
        return self.count("fail") == 0

    @property
    def exit_code(self) -> int:
        return 0 if self.launchable else 1

    def verdict(self) -> str:
        fails, warns = self.count("fail"), self.count("warn")
        if fails:
            return (
                f"The app CANNOT be launched against this server: {fails} failure(s), "
                f"{warns} warning(s)."
            )
        if warns:
            return f"The app can be registered and launched, with {warns} warning(s)."
        return "The app can be registered and launched; everything it uses is supported."

    def to_json(self) -> dict[str, Any]:
        return {
            "iss": self.iss,
            "launchable": self.launchable,
            "exit_code": self.exit_code,
            "summary": {s: self.count(s) for s in ("ok", "warn", "fail")},
            "checks": [line.to_json() for line in self.lines],
            "settings": [value.to_json() for value in self.settings],
        }

    def format_text(self) -> str:
        label = {"ok": "ok", "warn": "warn", "fail": "FAIL"}
        width = max((len(line.what) for line in self.lines), default=10)
        out = [f"smartapp check {self.iss}", ""]
        for line in self.lines:
            out.append(
                f"  {label[line.status]:<4}  {line.what:<{width}}  {line.detail} — {line.why}"
            )
        if self.settings:
            out += ["", "Settings (value, where it came from):"]
            named = max(len(value.name) for value in self.settings)
            out += [f"  {v.name:<{named}}  {v.value}  from {v.source}" for v in self.settings]
        out += ["", self.verdict()]
        return "\n".join(out)


# -- fetching --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Fetched:
    url: str
    status: int | None = None
    data: dict[str, Any] | None = None
    #: Why there is no answer: "ConnectTimeout", "ConnectionError", ...
    error: str | None = None
    ms: float = 0.0

    @property
    def answered(self) -> bool:
        return self.status is not None


def fetch_json(http: requests.Session, url: str, *, accept: str, timeout: float) -> Fetched:
    """GET `url` without credentials; the JSON object, if the answer is one."""
    started = time.perf_counter()
    try:
        response = get_within_origin(
            http, url, headers={"Accept": accept}, timeout=(min(timeout, 5.0), timeout)
        )
    except RedirectRefused as exc:
        # The app itself would refuse this redirect (smartapp/redirects.py): say so.
        return Fetched(
            url=url,
            status=exc.status,
            error=f"HTTP {exc.status}, redirect {exc.reason}"
            + (f" ({origin_text(exc.target)})" if exc.target else "")
            + ", which the app does not follow",
        )
    except requests.RequestException as exc:
        return Fetched(url=url, error=type(exc).__name__)
    ms = (time.perf_counter() - started) * 1000
    data: Any = None
    if response.status_code < 400:
        try:
            data = response.json()
        except ValueError:
            data = None
    return Fetched(
        url=url,
        status=response.status_code,
        data=data if isinstance(data, dict) else None,
        ms=ms,
    )


# -- the checks ------------------------------------------------------------------------


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secure(url: str) -> bool:
    scheme = urlsplit(url).scheme.lower()
    return scheme == "https" or (scheme == "http" and is_loopback(url))


def _strings(data: Mapping[str, Any], key: str) -> list[str]:
    value = data.get(key)
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _outcome(fetched: Fetched) -> str:
    """What a request got, for a detail column: "HTTP 404", "HTTP 200, not JSON", "SSLError"."""
    if not fetched.answered:
        if fetched.error == "SSLError":
            return "TLS failed: certificate not trusted or wrong host name (SSLError)"
        return str(fetched.error)
    if fetched.error:
        return fetched.error
    if fetched.status is not None and fetched.status < 400 and fetched.data is None:
        return f"HTTP {fetched.status}, not a JSON object"
    return f"HTTP {fetched.status}"


def _listing(values: Sequence[str]) -> str:
    return ", ".join(values) if values else "none"


def normalize_iss(raw: str) -> str:
    iss = raw.strip().rstrip("/")
    parts = urlsplit(iss)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{raw!r} is not an absolute http(s) FHIR base URL")
    if parts.query or parts.fragment:
        raise UsageError("the FHIR base URL must not have a query or fragment")
    return iss


def check_server(
    iss: str,
    *,
    profile: AppProfile,
    http: requests.Session,
    timeout: float = DEFAULT_TIMEOUT,
) -> CheckReport:
    """Every check, in the order IT reads them; never raises for what the server sends."""
    report = CheckReport(iss=iss, settings=profile.settings)
    if profile.settings_error is not None:
        report.add(
            "fail",
            "settings",
            "settings",
            profile.settings_error.replace("\n", "; "),
            "the app refuses to start with these settings: fix them first",
        )
    _check_issuer(report, iss, profile)

    well_known = fetch_json(http, iss + WELL_KNOWN, accept="application/json", timeout=timeout)
    metadata = fetch_json(http, iss + "/metadata", accept="application/fhir+json", timeout=timeout)
    if not well_known.answered and not metadata.answered:
        report.add(
            "fail",
            "reachable",
            "server reachable",
            f"no answer from {urlsplit(iss).netloc} ({_outcome(well_known)})",
            "the EHR's FHIR server must answer the app; check the URL, DNS, firewall and "
            "proxy between the app's host and the EHR",
        )
        return report
    answer = well_known if well_known.answered else metadata
    report.add(
        "ok",
        "reachable",
        "server reachable",
        f"answered in {answer.ms:.0f} ms",
        "the app talks to this server on every launch",
    )

    capability = metadata.data if _is_capability_statement(metadata.data) else None
    config = _check_smart_configuration(report, iss, well_known, capability)
    if config is not None:
        _check_authorization(report, iss, config, profile, capability)
    _check_capability_statement(report, metadata, capability, profile)
    _check_cds_hooks(report, iss, profile, http, timeout)
    return report


def _check_cds_hooks(
    report: CheckReport,
    iss: str,
    profile: AppProfile,
    http: requests.Session,
    timeout: float,
) -> None:
    """Whether the EHR may call the app's CDS Hooks service for this FHIR base.

    In CDS Hooks the EHR is the client: nothing on its FHIR server says whether it calls
    hooks. What can be checked is the app's side: SMARTAPP_CDS_CLIENTS registers an EHR
    whose `fhir_servers` hold this base, and that EHR's JWKS answers with signing keys.
    """
    why = (
        "the EHR, as the CDS client, signs each hook call; the app believes only EHRs "
        "registered in SMARTAPP_CDS_CLIENTS (nothing on the FHIR server says whether the "
        "EHR calls hooks)"
    )
    if profile.cds_clients_error is not None:
        report.add(
            "fail",
            "cds-hooks",
            "CDS Hooks client",
            profile.cds_clients_error,
            "the app refuses to start with this file: fix it first",
        )
        return
    clients = [c for c in profile.cds_clients if iss in c.fhir_servers]
    if not clients:
        where = profile.cds_clients_file or "unset"
        report.add(
            "ok",
            "cds-hooks",
            "CDS Hooks client",
            f"no EHR registered for this FHIR base (SMARTAPP_CDS_CLIENTS: {where}): its hook "
            "calls are refused; the sidebar works without them",
            why,
        )
        return
    client = clients[0]
    status: Status
    report.add(
        "ok",
        "cds-hooks",
        "CDS Hooks client",
        f"EHR {client.iss} registered to call /cds-services for this base",
        why,
    )
    if client.jwks_url is None:
        keys = (client.jwks or {}).get("keys")
        status = "ok" if keys else "warn"
        detail = f"{len(keys or [])} key(s) from jwks_file"
    else:
        fetched = fetch_json(http, client.jwks_url, accept="application/json", timeout=timeout)
        keys = (fetched.data or {}).get("keys") if fetched.status == 200 else None
        usable = [k for k in keys or [] if isinstance(k, dict) and k.get("kty") in ("EC", "RSA")]
        status = "ok" if usable else "warn"
        detail = (
            f"{len(usable)} signing key(s) at {client.jwks_url}"
            if usable
            else f"no usable keys at {client.jwks_url} ({_outcome(fetched)})"
        )
    report.add(
        status,
        "cds-hooks-jwks",
        "CDS Hooks client keys",
        detail,
        "each hook call's JWT must verify with one of these keys (ES384 or RS384), or it is "
        "refused",
    )


def _check_issuer(report: CheckReport, iss: str, profile: AppProfile) -> None:
    if urlsplit(iss).scheme == "https":
        report.add(
            "ok",
            "iss-https",
            "FHIR base URL uses https",
            iss,
            "tokens and chart data travel over it",
        )
    elif is_loopback(iss):
        report.add(
            "ok",
            "iss-https",
            "FHIR base URL uses https",
            "http on loopback (allowed for a local sandbox only)",
            "tokens and chart data travel over it",
        )
    else:
        report.add(
            "fail",
            "iss-https",
            "FHIR base URL uses https",
            f"{urlsplit(iss).scheme}:// on a non-loopback host",
            "tokens and chart data would travel in clear text; the EHR must publish an "
            "https FHIR base URL",
        )
    if iss in profile.allowed_issuers:
        report.add(
            "ok",
            "allow-list",
            "in SMARTAPP_ALLOWED_ISSUERS",
            "listed",
            "the app refuses launches from issuers not on its allow-list",
        )
    else:
        report.add(
            "warn",
            "allow-list",
            "in SMARTAPP_ALLOWED_ISSUERS",
            "not listed yet",
            "add this exact URL (as the EHR sends it in `iss`) to SMARTAPP_ALLOWED_ISSUERS "
            "before launching; until then the app refuses launches from it",
        )


def _is_capability_statement(data: Mapping[str, Any] | None) -> bool:
    return data is not None and data.get("resourceType") == "CapabilityStatement"


def _check_smart_configuration(
    report: CheckReport,
    iss: str,
    well_known: Fetched,
    capability: Mapping[str, Any] | None,
) -> _Config | None:
    """What the app's discovery would make of the server, or None after a FAIL line."""
    from smartapp.smart.discovery import DiscoveryError, SMARTConfiguration

    what = "SMART configuration"
    why = "tells the app where to send the clinician to authorize and where to get tokens"
    if well_known.status is not None and (well_known.status >= 500 or well_known.status == 429):
        report.add(
            "fail",
            "smart-configuration",
            what,
            f"{WELL_KNOWN} answered HTTP {well_known.status}",
            why + "; the app does not fall back when the server errs, so launches fail",
        )
        return None
    if well_known.status is not None and well_known.error:
        # A redirect off the issuer's origin: the app's discovery refuses it, no fallback.
        report.add(
            "fail",
            "smart-configuration",
            what,
            f"{WELL_KNOWN}: {well_known.error}",
            why + "; serve it from the FHIR server's own origin",
        )
        return None
    if well_known.data is not None:
        report.add("ok", "smart-configuration", what, WELL_KNOWN, why)
        try:
            # The app's own parser: what the check accepts, a launch accepts.
            parsed = SMARTConfiguration.from_well_known(iss, well_known.data)
        except DiscoveryError as exc:
            if "S256" in str(exc):
                return _Config(None, well_known.data)  # the PKCE line says why
            return _Config(None, well_known.data, refused=str(exc))
        return _Config(parsed, well_known.data)
    try:
        fallback = SMARTConfiguration.from_capability_statement(iss, capability or {})
    except DiscoveryError as exc:
        report.add(
            "fail",
            "smart-configuration",
            what,
            f"no {WELL_KNOWN}; the CapabilityStatement's oauth-uris are unusable: {exc}",
            why + "; without them the app cannot start a launch",
        )
        return None
    if fallback is None:
        report.add(
            "fail",
            "smart-configuration",
            what,
            f"no {WELL_KNOWN} ({_outcome(well_known)}) and no oauth-uris extension in the "
            "CapabilityStatement",
            why + "; without it the app cannot start a launch",
        )
        return None
    report.add(
        "warn",
        "smart-configuration",
        what,
        f"no {WELL_KNOWN}; using the deprecated oauth-uris extension of the CapabilityStatement",
        "the app can launch, but the server declares no SMART capabilities or PKCE "
        "methods, so the lines below that depend on them cannot be confirmed",
    )
    return _Config(fallback, {})


@dataclass(frozen=True)
class _Config:
    #: The app's SMARTConfiguration; None when the app's discovery refuses the document.
    parsed: SMARTConfiguration | None
    raw: Mapping[str, Any]
    #: Why the app's discovery refuses it, other than PKCE (which has its own line).
    refused: str | None = None


def _check_authorization(
    report: CheckReport,
    iss: str,
    config: _Config,
    profile: AppProfile,
    capability: Mapping[str, Any] | None = None,
) -> None:
    raw = config.raw
    fallback = config.parsed is not None and config.parsed.source == "capability-statement"
    authorize = (
        config.parsed.authorization_endpoint if config.parsed else raw.get("authorization_endpoint")
    )
    token = config.parsed.token_endpoint if config.parsed else raw.get("token_endpoint")
    endpoints = {"authorization_endpoint": authorize, "token_endpoint": token}
    missing = [k for k, v in endpoints.items() if not isinstance(v, str) or not v]
    insecure = [k for k, v in endpoints.items() if isinstance(v, str) and v and not _secure(v)]
    why = "the clinician's browser is sent to the first; the app redeems codes at the second"
    if config.refused:
        report.add("fail", "endpoints", "OAuth endpoints (https)", config.refused, why)
    elif missing or insecure:
        problems = [f"{k} missing" for k in missing] + [f"{k} is not https" for k in insecure]
        report.add(
            "fail",
            "endpoints",
            "OAuth endpoints (https)",
            "; ".join(problems),
            why + " (http is accepted on loopback only)",
        )
    else:
        report.add(
            "ok",
            "endpoints",
            "OAuth endpoints (https)",
            f"authorize at {urlsplit(str(authorize)).netloc}, token at "
            f"{urlsplit(str(token)).netloc}",
            why,
        )
    grants = _strings(raw, "grant_types_supported")
    if grants and "authorization_code" not in grants:
        report.add(
            "fail",
            "grant-types",
            "authorization_code grant",
            f"grant_types_supported: {_listing(grants)}",
            "SMART App Launch is the authorization-code flow",
        )

    # PKCE
    methods = _strings(raw, "code_challenge_methods_supported")
    pkce_why = (
        "PKCE makes an intercepted authorization code useless; SMART 2 requires S256 and "
        "forbids plain"
    )
    if fallback:
        report.add(
            "warn",
            "pkce",
            "PKCE S256",
            "not declared (no .well-known)",
            pkce_why + "; the app sends S256 anyway, which a server without PKCE ignores",
        )
    elif "code_challenge_methods_supported" not in raw and _family_omits_pkce(
        capability, profile.quirks_for(iss)
    ):
        report.add(
            "warn",
            "pkce",
            "PKCE S256",
            "code_challenge_methods_supported not listed",
            pkce_why + "; this EHR family does S256 without listing it (quirks profile): "
            "the app sends S256, never plain",
        )
    elif "S256" not in methods:
        report.add(
            "fail",
            "pkce",
            "PKCE S256",
            f"code_challenge_methods_supported: {_listing(methods)}",
            pkce_why + "; the app refuses servers without S256",
        )
    elif "plain" in methods:
        report.add(
            "warn",
            "pkce",
            "PKCE S256",
            "S256 and also plain",
            pkce_why + "; the app uses S256 only, but the server should drop plain",
        )
    else:
        report.add("ok", "pkce", "PKCE S256", "S256 (not plain)", pkce_why)

    capabilities = set(_strings(raw, "capabilities"))
    if fallback or not capabilities:
        report.add(
            "warn",
            "capabilities",
            "SMART capabilities",
            "none declared",
            "launch types, client authentication, context and scopes cannot be confirmed; "
            "try a launch in the EHR's test environment",
        )
        return

    def need(cap: str, key: str, what: str, why: str, *, severity: Status = "fail") -> bool:
        present = cap in capabilities
        report.add(
            "ok" if present else severity, key, what, cap if present else f"{cap} not listed", why
        )
        return present

    need(
        "launch-ehr",
        "launch-ehr",
        "EHR launch",
        "the clinician opens the app from the patient's chart (EHR launch)",
    )
    need(
        "launch-standalone",
        "launch-standalone",
        "standalone launch",
        "administrators sign in to /admin through a standalone launch",
        severity="warn",
    )
    need(
        "context-ehr-patient",
        "context-ehr-patient",
        "patient context in EHR launch",
        "the sidebar is bound to the patient the EHR launched it for",
    )

    auth_cap = f"client-{profile.client_auth}"
    auth_method = {
        "public": "none",
        "confidential-symmetric": "client_secret_basic",
        "confidential-asymmetric": "private_key_jwt",
    }[profile.client_auth]
    configured = {
        "public": "a public client (PKCE, no secret)",
        "confidential-symmetric": "a confidential client (SMARTAPP_CLIENT_SECRET is set)",
        "confidential-asymmetric": "a confidential client (SMARTAPP_PRIVATE_KEY is set)",
    }[profile.client_auth]
    methods_listed = _strings(raw, "token_endpoint_auth_methods_supported")
    if auth_cap not in capabilities:
        report.add(
            "fail",
            "client-auth",
            "client authentication",
            f"{auth_cap} not listed",
            f"the app is {configured}; the server must accept that kind of client",
        )
    elif methods_listed and auth_method not in methods_listed and profile.client_auth != "public":
        report.add(
            "fail",
            "client-auth",
            "client authentication",
            f"token_endpoint_auth_methods_supported lacks {auth_method}",
            f"the app is {configured} and authenticates with {auth_method}",
        )
    else:
        detail = auth_cap
        if methods_listed and auth_method not in methods_listed:
            detail += (
                " (token_endpoint_auth_methods_supported omits none; servers usually accept it)"
            )
        report.add("ok", "client-auth", "client authentication", detail, f"the app is {configured}")
    if profile.client_auth == "confidential-asymmetric":
        algs = _strings(raw, "token_endpoint_auth_signing_alg_values_supported")
        if algs and not {"RS384", "ES384"} & set(algs):
            report.add(
                "fail",
                "client-auth-alg",
                "client assertion algorithm",
                f"token_endpoint_auth_signing_alg_values_supported: {_listing(algs)}",
                "the app signs its client assertions with RS384 or ES384 (SMART's "
                "required algorithms)",
            )

    if "openid" in profile.scope:
        oidc_why = (
            "the clinician's identity (fhirUser) names the author of the note and admits admins"
        )
        if "sso-openid-connect" not in capabilities:
            report.add(
                "warn",
                "sso-openid-connect",
                "OpenID Connect (fhirUser)",
                "sso-openid-connect not listed",
                oidc_why + "; without it notes carry no clinician and /admin sign-in fails",
            )
        elif config.parsed is not None and not config.parsed.jwks_uri:
            report.add(
                "fail",
                "sso-openid-connect",
                "OpenID Connect (fhirUser)",
                "sso-openid-connect listed but no jwks_uri",
                "the app must verify the identity token's signature; without the "
                "server's keys it refuses the launch",
            )
        elif not raw.get("issuer"):
            report.add(
                "warn",
                "sso-openid-connect",
                "OpenID Connect (fhirUser)",
                "jwks_uri but no issuer",
                oidc_why + "; the identity token's iss must then equal the FHIR base URL",
            )
        else:
            report.add(
                "ok",
                "sso-openid-connect",
                "OpenID Connect (fhirUser)",
                "sso-openid-connect, issuer and jwks_uri",
                oidc_why,
            )
    if "offline_access" in profile.scope or "online_access" in profile.scope:
        need(
            "permission-offline",
            "permission-offline",
            "refresh tokens",
            "access tokens expire in minutes; without a refresh token the clinician must "
            "relaunch the app",
            severity="warn",
        )

    if "permission-v2" in capabilities:
        report.add(
            "ok",
            "scopes-version",
            "SMART scopes v2",
            "permission-v2",
            "the app asks v2 scopes (patient/Observation.rs) and also reads v1 grants",
        )
    elif "permission-v1" in capabilities:
        report.add(
            "warn",
            "scopes-version",
            "SMART scopes v2",
            "only permission-v1",
            "the app asks v2 scopes (patient/Observation.rs); if the server refuses "
            "them, put the v1 forms (.read/.write) in launch.json's scope",
        )
    else:
        report.add(
            "warn",
            "scopes-version",
            "SMART scopes v2",
            "neither permission-v1 nor v2",
            "which scope syntax the server accepts is unknown",
        )


def _check_capability_statement(
    report: CheckReport,
    metadata: Fetched,
    capability: Mapping[str, Any] | None,
    profile: AppProfile,
) -> None:
    from smartapp.fhir.capabilities import (
        resource_capability,
        supports_batch,
        supports_include,
        supports_interaction,
        supports_transaction,
    )
    from smartapp.fhir.chart import MEDICATION_INCLUDE

    what = "CapabilityStatement"
    if capability is None:
        report.add(
            "warn",
            "capability-statement",
            what,
            f"/metadata unreadable without a token ({_outcome(metadata)})",
            "the app reads it at launch (with the token) to choose batch and _include; "
            "what the server supports per resource type could not be checked here",
        )
        return
    report.add(
        "ok",
        "capability-statement",
        what,
        "/metadata",
        "the app reads it to choose how to load the chart",
    )

    version = capability.get("fhirVersion")
    version_why = "the app reads and writes FHIR R4 (4.0.1)"
    if isinstance(version, str) and version.startswith("4.0."):
        report.add("ok", "fhir-version", "FHIR R4", version, version_why)
    elif isinstance(version, str) and version.startswith("4.3."):
        report.add(
            "warn",
            "fhir-version",
            "FHIR R4",
            f"{version} (R4B)",
            version_why + "; R4B is close but not the same",
        )
    elif isinstance(version, str):
        report.add("fail", "fhir-version", "FHIR R4", version, version_why)
    else:
        report.add("warn", "fhir-version", "FHIR R4", "fhirVersion not stated", version_why)

    formats = [f.lower() for f in _strings(capability, "format")]
    json_ok = any(f == "json" or "json" in f.split(";")[0] for f in formats)
    report.add(
        "ok" if json_ok else "fail",
        "json-format",
        "JSON format",
        _listing(formats),
        "the app speaks application/fhir+json only",
    )

    _check_quirks(report, report.iss, capability, profile)

    if supports_batch(capability):
        report.add("ok", "batch", "batch", "batch", "the whole chart in one round trip")
    else:
        report.add(
            "warn",
            "batch",
            "batch",
            "not supported",
            "the app falls back to concurrent searches: more requests, slower sidebar",
        )
    if supports_transaction(capability):
        report.add(
            "ok",
            "transaction",
            "transaction",
            "transaction",
            "the note and its Provenance are written atomically",
        )
    else:
        report.add(
            "warn",
            "transaction",
            "transaction",
            "not supported",
            "the note and its Provenance are written as two creates (not atomic)",
        )

    for rtype in (*profile.read_types, *profile.search_types):
        _check_type(
            report,
            capability,
            rtype,
            searched=rtype in profile.search_types,
            resource_capability=resource_capability,
            supports_interaction=supports_interaction,
        )

    if "MedicationRequest" in profile.search_types and "Medication" in profile.read_types:
        if supports_include(capability, "MedicationRequest", MEDICATION_INCLUDE):
            report.add(
                "ok",
                "include-medication",
                f"_include={MEDICATION_INCLUDE}",
                "supported",
                "medications arrive with the requests, in the same round",
            )
        else:
            report.add(
                "warn",
                "include-medication",
                f"_include={MEDICATION_INCLUDE}",
                "not listed (optional)",
                "referenced Medications are read in one more round trip",
            )

    if profile.writes_documents:
        _check_create(
            report,
            capability,
            "DocumentReference",
            why="the signed-off note is written to the chart as a DocumentReference",
            without="notes stay in the app's outbox and never reach the chart",
            resource_capability=resource_capability,
            supports_interaction=supports_interaction,
        )
        if profile.updates_documents:
            updates = supports_interaction(capability, "DocumentReference", "update")
            report.add(
                "ok" if updates else "warn",
                "update:DocumentReference",
                "DocumentReference update",
                "update" if updates else "update not supported",
                "saving the note again updates the same draft in place; without update a "
                "second save writes a new draft that replaces the first (relatesTo)",
            )
    if profile.writes_provenance:
        _check_create(
            report,
            capability,
            "Provenance",
            why="records that the note was drafted by the AI and verified by the clinician",
            without="the note would be written without its provenance",
            resource_capability=resource_capability,
            supports_interaction=supports_interaction,
        )


def _family_omits_pkce(capability: Mapping[str, Any] | None, configured: str | None) -> bool:
    from smartapp.quirks import QuirksError, catalog

    try:
        chosen = catalog().choose(configured=configured, capabilities=capability)
    except QuirksError:
        chosen = catalog().detect(capability)
    return chosen.value("pkce_methods_listed", True) is False


def _check_quirks(
    report: CheckReport, iss: str, capability: Mapping[str, Any], profile: AppProfile
) -> None:
    """Which EHR family's quirks profile applies (the site file's choice for the issuer,
    else the one the CapabilityStatement names), and each thing it changes."""
    from smartapp.fhir.capabilities import supports_sort
    from smartapp.quirks import QuirksError, catalog

    if profile.site_file_error is not None:
        report.add(
            "fail",
            "site-file",
            "site file",
            f"{profile.site_file} cannot be used: {profile.site_file_error}",
            "the app refuses to start with this file (SMARTAPP_CONFIG): fix it first",
        )
    configured = profile.quirks_for(iss)
    detected = catalog().detect(capability)
    try:
        quirks = catalog().choose(configured=configured, capabilities=capability)
    except QuirksError:  # the site file is validated against the catalog; stay safe anyway
        quirks = detected
    if quirks.chosen_by == "site file":
        how = (
            f'set for this issuer in the site file {profile.site_file} (ehr.quirks = "{quirks.id}")'
        )
        if detected.id != quirks.id:
            how += f"; the CapabilityStatement alone would give {detected.id}"
    elif quirks.chosen_by == "CapabilityStatement":
        how = "detected from the CapabilityStatement's software/publisher"
    else:
        how = "no known EHR family named in software/publisher"
    if quirks.chosen_by != "site file":
        how += '; a site file\'s [sites."<iss>".ehr] quirks = "..." overrides it'
    changes = ", ".join(q.key for q in quirks.quirks) or "nothing"
    report.add(
        "ok",
        "quirks-profile",
        "EHR quirks profile",
        f"{quirks.id} ({quirks.title}); changes: {changes}",
        how,
    )
    for quirk in quirks.quirks:
        report.add(
            "ok",
            f"quirk-{quirk.key}",
            f"quirk: {quirk.key}",
            quirk.says,
            f"{quirk.app} ({quirk.cite})",
        )
    declared = supports_sort(capability, "Observation", "date")
    newest = quirks.sort_newest(declared)
    report.add(
        "ok" if newest else "warn",
        "sort-newest",
        "Observations newest first",
        "_sort=-date" if newest else "not asked (_sort not declared for Observation)",
        "with the page cap reached, the latest values are among those read"
        if newest
        else "with the page cap reached, cards say the latest values may not have been read",
    )


def _check_create(
    report: CheckReport,
    capability: Mapping[str, Any],
    rtype: str,
    *,
    why: str,
    without: str,
    resource_capability: Any,
    supports_interaction: Any,
) -> None:
    key, what = f"write:{rtype}", f"{rtype} create"
    if not supports_interaction(capability, rtype, "create"):
        report.add("warn", key, what, "create not supported", f"{why}; without it {without}")
        return
    resource = resource_capability(capability, rtype) or {}
    if resource.get("conditionalCreate") is not True:
        # The app creates with If-None-Exist so that a retry after a lost answer finds
        # the first write instead of making a second one.
        report.add(
            "warn",
            key,
            what,
            "create, but conditionalCreate not declared",
            f"{why}; a write retried after a lost answer could be duplicated",
        )
        return
    report.add("ok", key, what, "create, conditional create", why)


def _check_type(
    report: CheckReport,
    capability: Mapping[str, Any],
    rtype: str,
    *,
    searched: bool,
    resource_capability: Any,
    supports_interaction: Any,
) -> None:
    key = f"{'search' if searched else 'read'}:{rtype}"
    what = f"{rtype} {'search by patient' if searched else 'read'}"
    severity: Status = "fail" if rtype == "Patient" else "warn"
    why = (
        "the sidebar shows nothing without the patient"
        if rtype == "Patient"
        else f"the chart would lack {rtype} (the sidebar says what is missing)"
    )
    from smartapp.fhir.chart import OPTIONAL_TYPES

    resource = resource_capability(capability, rtype)
    if resource is None and rtype in OPTIONAL_TYPES:
        report.add(
            "ok",
            key,
            what,
            "not in the CapabilityStatement",
            f"optional: the app asks for {rtype} only where the server offers it",
        )
        return
    if resource is None:
        report.add(severity, key, what, "not in the CapabilityStatement", why)
        return
    missing = [
        code
        for code in (("read", "search-type") if searched else ("read",))
        if not supports_interaction(capability, rtype, code)
    ]
    params = {
        p.get("name")
        for p in resource.get("searchParam") or []
        if isinstance(p, dict) and isinstance(p.get("name"), str)
    }
    if searched and "patient" not in params:
        missing.append("search parameter patient")
    if missing:
        report.add(severity, key, what, f"{_listing(missing)} not listed", why)
        return
    optional = [p for p in EXTRA_SEARCH_PARAMS.get(rtype, ()) if searched and p not in params]
    if optional:
        report.add(
            "warn",
            key,
            what,
            f"search parameter {_listing(optional)} not listed",
            f"the app filters {rtype} by {_listing(optional)}; a server that ignores "
            "it sends more than needed",
        )
        return
    report.add(
        "ok",
        key,
        what,
        "read, search-type, patient" if searched else "read",
        "part of the chart the suggestions are drafted from",
    )


# -- the command -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "iss", metavar="ISS", help="the FHIR server's base URL (as the EHR sends it in `iss`)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT:g})",
    )


def _no_credentials(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


def run_cli(args: argparse.Namespace, *, environ: Mapping[str, str] | None = None) -> int:
    try:
        iss = normalize_iss(args.iss)
        if not args.timeout > 0:
            raise UsageError("--timeout must be more than 0 seconds")
    except UsageError as exc:
        print(f"smartapp check: {exc}", file=sys.stderr)
        return 2
    from smartapp.siteconfig import read_sources

    # Read as `serve` reads it: os.environ over the working directory's .env, the site file.
    profile = AppProfile.from_sources(read_sources(environ=environ))
    with requests.Session() as http:
        # No credentials of any kind: without an auth of its own, requests would add
        # ~/.netrc's for the host. (Proxy settings from the environment still apply.)
        http.auth = _no_credentials
        report = check_server(iss, profile=profile, http=http, timeout=args.timeout)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.format_text())
    return report.exit_code

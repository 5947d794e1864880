"""The sandbox's SMART App Launch 2.x authorization server, on authlib's Flask server.

https://hl7.org/fhir/smart-app-launch/app-launch.html — authorization code with PKCE S256
only, EHR and standalone launch, refresh tokens for offline_access/online_access, an
RS256 id_token with `fhirUser`, and client authentication by `none`,
`client_secret_basic` or `private_key_jwt`.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import requests
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import AuthorizationCodeMixin
from authlib.oidc.core.grants import OpenIDCode
from flask import Flask, Response, redirect, render_template, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

from smartapp.sandbox import scopes as smart_scopes
from smartapp.sandbox.fhir_service import Access, FHIRError
from smartapp.sandbox.store import Store

CODE_LIFETIME = 120  # seconds; RFC 6749 recommends at most ten minutes
LAUNCH_LIFETIME = 3600
REFRESH_LIFETIME = 30 * 24 * 3600
ID_TOKEN_LIFETIME = 3600
#: SMART asks confidential-asymmetric clients to sign with RS384 or ES384.
CLIENT_ASSERTION_ALGORITHMS = ["RS384", "ES384", "RS256", "ES256"]

CAPABILITIES = [
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-standalone-encounter",
    "context-banner",
    "context-style",
    "sso-openid-connect",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
]

SMART_STYLE = {
    "color_background": "#f5f7fa",
    "color_error": "#b42318",
    "color_highlight": "#0b5cad",
    "color_modal_backdrop": "rgba(15, 23, 42, 0.45)",
    "color_success": "#1a7f37",
    "color_text": "#1f2933",
    "dim_border_radius": "6px",
    "dim_font_size": "14px",
    "dim_spacing_size": "16px",
    "font_family_body": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
    "font_family_heading": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
}


def resolve_uri(uri: str, app_base_url: str) -> str:
    """launch.json's relative URIs are relative to the app's public base URL."""
    if urlsplit(uri).scheme:
        return uri
    return app_base_url.rstrip("/") + "/" + uri.lstrip("/")


@dataclass(frozen=True)
class ClientRegistration:
    """What IT registered for one app: launch.json plus, optionally, its credentials."""

    client_id: str
    client_name: str
    redirect_uris: tuple[str, ...]
    launch_uri: str | None
    scope: tuple[str, ...]
    token_endpoint_auth_method: str
    grant_types: tuple[str, ...]
    client_secret: str | None = None
    jwks: Mapping[str, Any] | None = None
    jwks_uri: str | None = None

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], app_base_url: str) -> ClientRegistration:
        try:
            client_id = str(manifest["client_id"])
            redirect_uris = tuple(
                resolve_uri(str(u), app_base_url) for u in manifest["redirect_uris"]
            )
        except (KeyError, TypeError) as exc:
            raise ValueError("a client registration needs client_id and redirect_uris") from exc
        method = str(manifest.get("token_endpoint_auth_method") or "none")
        if method not in ("none", "client_secret_basic", "client_secret_post", "private_key_jwt"):
            raise ValueError(f"unsupported token_endpoint_auth_method {method!r}")
        if method.startswith("client_secret") and not manifest.get("client_secret"):
            raise ValueError(f"client {client_id!r} uses {method} but has no client_secret")
        jwks_uri = manifest.get("jwks_uri")
        if method == "private_key_jwt" and not (manifest.get("jwks") or jwks_uri):
            raise ValueError(f"client {client_id!r} uses private_key_jwt but has no jwks")
        launch_uri = manifest.get("launch_uri")
        return cls(
            client_id=client_id,
            client_name=str(manifest.get("client_name") or client_id),
            redirect_uris=redirect_uris,
            launch_uri=resolve_uri(str(launch_uri), app_base_url) if launch_uri else None,
            scope=tuple(smart_scopes.split(str(manifest.get("scope") or ""))),
            token_endpoint_auth_method=method,
            grant_types=tuple(
                manifest.get("grant_types") or ("authorization_code", "refresh_token")
            ),
            client_secret=manifest.get("client_secret"),
            jwks=manifest.get("jwks"),
            jwks_uri=resolve_uri(str(jwks_uri), app_base_url) if jwks_uri else None,
        )


class Client(ClientMixin):  # type: ignore[misc]
    def __init__(self, registration: ClientRegistration) -> None:
        self.registration = registration
        self.client_id = registration.client_id

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # SMART apps must always send redirect_uri; no default keeps that explicit.
        return None

    def get_allowed_scope(self, scope: str) -> str | None:
        granted = smart_scopes.grant(smart_scopes.split(scope), self.registration.scope)
        return " ".join(granted) if granted else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.registration.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        expected = self.registration.client_secret
        return bool(expected) and secrets.compare_digest(str(expected), client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        registered = self.registration.token_endpoint_auth_method
        if registered in ("client_secret_basic", "client_secret_post"):
            return method in ("client_secret_basic", "client_secret_post")
        return method == registered

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.registration.grant_types


@dataclass(frozen=True)
class EHRUser:
    """The signed-in EHR user and the launch context they chose or launched with."""

    practitioner: str
    patient: str | None
    encounter: str | None
    launch_type: str  # "ehr" | "standalone"
    #: A CDS Hooks card link's appContext, passed through to the token response.
    app_context: str | None = None


class AuthCode(AuthorizationCodeMixin):  # type: ignore[misc]
    def __init__(self, row: Mapping[str, Any]) -> None:
        self.row = row
        self.code = row["code"]
        self.code_challenge = row["code_challenge"]
        self.code_challenge_method = row["code_challenge_method"]

    def get_redirect_uri(self) -> str:
        return str(self.row["redirect_uri"])

    def get_scope(self) -> str:
        return str(self.row["scope"])

    def get_nonce(self) -> str | None:
        nonce = self.row["nonce"]
        return None if nonce is None else str(nonce)

    def get_auth_time(self) -> int:
        return int(self.row["auth_time"])

    def get_acr(self) -> str | None:
        return None

    def get_amr(self) -> list[str] | None:
        return None


class TokenRecord(TokenMixin):  # type: ignore[misc]
    def __init__(self, row: Mapping[str, Any]) -> None:
        self.row = row

    def check_client(self, client: Client) -> bool:
        return bool(self.row["client_id"] == client.get_client_id())

    def get_scope(self) -> str:
        return str(self.row["scope"])

    def get_expires_in(self) -> int:
        return int(self.row["expires_at"] - self.row["issued_at"])

    def is_expired(self) -> bool:
        return bool(self.row["expires_at"] < time.time())

    def is_revoked(self) -> bool:
        return bool(self.row["access_revoked"])

    def get_user(self) -> EHRUser:
        return EHRUser(
            self.row["user"], self.row["patient"], self.row["encounter"], self.row["launch_type"]
        )


def _sandbox(server: Any) -> SandboxAuth:
    sandbox: SandboxAuth = server.sandbox
    return sandbox


class SMARTAuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "none",
    ]

    def save_authorization_code(self, code: str, request: Any) -> None:
        user: EHRUser = request.user
        data = request.payload.data
        if user.app_context is not None:
            _sandbox(self.server).remember_app_context(f"code:{code}", user.app_context)
        _sandbox(self.server).store.add_code(
            code=code,
            client_id=request.client.get_client_id(),
            redirect_uri=request.payload.redirect_uri,
            scope=request.scope,
            user=user.practitioner,
            patient=user.patient,
            encounter=user.encounter,
            launch_type=user.launch_type,
            nonce=data.get("nonce"),
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            auth_time=int(time.time()),
            expires_at=time.time() + CODE_LIFETIME,
        )

    def query_authorization_code(self, code: str, client: Client) -> AuthCode | None:
        store = _sandbox(self.server).store
        row = store.get_code(code)
        if row is None or row["client_id"] != client.get_client_id():
            return None
        if row["used"]:
            store.revoke_tokens_from_code(code)
            return None
        if row["expires_at"] < time.time():
            return None
        return AuthCode(row)

    def delete_authorization_code(self, authorization_code: AuthCode) -> None:
        # Kept, marked used: a replay must be recognised to revoke what the code produced.
        _sandbox(self.server).store.mark_code_used(authorization_code.code)

    def authenticate_user(self, authorization_code: AuthCode) -> EHRUser:
        row = authorization_code.row
        app_context = _sandbox(self.server).take_app_context(f"code:{authorization_code.code}")
        return EHRUser(
            row["user"], row["patient"], row["encounter"], row["launch_type"], app_context
        )


class SMARTRefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = SMARTAuthorizationCodeGrant.TOKEN_ENDPOINT_AUTH_METHODS

    @property
    def INCLUDE_NEW_REFRESH_TOKEN(self) -> bool:  # noqa: N802 - authlib's name
        # Rotate (the default): each refresh returns a new refresh token and retires the
        # old one. Without rotation (as Oracle Health may): no new one, the old one stays.
        return _sandbox(self.server).rotate_refresh_tokens

    def authenticate_refresh_token(self, refresh_token: str) -> TokenRecord | None:
        row = _sandbox(self.server).store.get_token_by_refresh(refresh_token)
        if row is None or row["refresh_revoked"]:
            return None
        if row["refresh_expires_at"] is None or row["refresh_expires_at"] < time.time():
            return None
        return TokenRecord(row)

    def authenticate_user(self, refresh_token: TokenRecord) -> EHRUser:
        return refresh_token.get_user()

    def revoke_old_credential(self, refresh_token: TokenRecord) -> None:
        if _sandbox(self.server).rotate_refresh_tokens:
            _sandbox(self.server).store.revoke_refresh(refresh_token.row["refresh_token"])


class SMARTBackendServicesGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    """SMART Backend Services: client_credentials for a client registered for it, which
    authenticates only by a signed JWT assertion (its JWKS URL or registered keys).
    https://hl7.org/fhir/smart-app-launch/backend-services.html"""

    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt"]

    def validate_token_request(self) -> None:
        super().validate_token_request()
        # Only system/ scopes: there is no user or patient whose context could bound the rest.
        from authlib.oauth2.rfc6749 import InvalidScopeError

        scopes = smart_scopes.split(self.request.payload.scope)
        if not scopes or any(not s.startswith("system/") for s in scopes):
            raise InvalidScopeError(description="Backend services ask for system/ scopes only")
        if self.request.client.get_allowed_scope(self.request.payload.scope) is None:
            raise InvalidScopeError(description="The client is not registered for these scopes")

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        # Requested ∩ registered, as for the other grants (authlib would grant as asked).
        granted = self.request.client.get_allowed_scope(self.request.payload.scope)
        token: dict[str, Any] = self.generate_token(scope=granted, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class SMARTOpenIDCode(OpenIDCode):  # type: ignore[misc]
    def __init__(self, sandbox: SandboxAuth) -> None:
        super().__init__(require_nonce=False)
        self.sandbox = sandbox

    def resolve_client_private_key(self, client: Client) -> RSAKey:
        return self.sandbox.signing_key

    def get_client_algorithm(self, client: Client) -> str:
        return "RS256"

    def get_encode_header(self, client: Client) -> dict[str, str]:
        return {"alg": "RS256", "typ": "JWT", "kid": self.sandbox.kid}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        return {
            "iss": self.sandbox.issuer,
            "aud": client.get_client_id(),
            "exp": int(time.time()) + ID_TOKEN_LIFETIME,
        }

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return self.sandbox.store.nonce_used(request.payload.client_id, nonce)

    def generate_user_info(self, user: EHRUser, scope: str) -> dict[str, Any]:
        granted = smart_scopes.split(scope)
        info: dict[str, Any] = {"sub": user.practitioner}
        if "fhirUser" in granted or "profile" in granted:
            # Absolute, as Epic and others send it; apps must cope with both forms.
            info["fhirUser"] = f"{self.sandbox.fhir_base}/Practitioner/{user.practitioner}"
        if "profile" in granted:
            info["profile"] = info["fhirUser"]
            name = self.sandbox.practitioner_name(user.practitioner)
            if name:
                info["name"] = name
        return info


class SandboxRevocation(RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009 token revocation: a revoked refresh token takes its access token with it."""

    CLIENT_AUTH_METHODS = ["none", "client_secret_basic", "client_secret_post", "private_key_jwt"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenRecord | None:
        store = _sandbox(self.server).store
        row = None
        if token_type_hint != "access_token":
            row = store.get_token_by_refresh(token_string)
        if row is None and token_type_hint != "refresh_token":
            row = store.get_token(token_string)
        return TokenRecord(row) if row is not None else None

    def revoke_token(self, token: TokenRecord, request: Any) -> None:
        _sandbox(self.server).store.revoke_grant(token.row["access_token"])


class PrivateKeyJWT(JWTBearerClientAssertion):  # type: ignore[misc]
    """SMART confidential-asymmetric client authentication (RFC 7523 client assertions)."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, sandbox: SandboxAuth) -> None:
        super().__init__(validate_jti=True, leeway=30)
        self.sandbox = sandbox
        self._jti_lock = threading.Lock()
        self._seen_jti: dict[str, float] = {}

    def get_audiences(self) -> list[str]:
        # A client signs its assertion for the endpoint it calls (RFC 7523 §3).
        return [self.sandbox.token_endpoint, self.sandbox.revocation_endpoint]

    def validate_jti(self, claims: Mapping[str, Any], jti: str) -> bool:
        key = f"{claims['sub']}:{jti}"
        now = time.time()
        with self._jti_lock:
            self._seen_jti = {k: exp for k, exp in self._seen_jti.items() if exp > now}
            if key in self._seen_jti:
                return False
            self._seen_jti[key] = float(claims.get("exp") or now + 300)
        return True

    def resolve_client_public_key(self, client: Client) -> KeySet:
        registration = client.registration
        if registration.jwks:
            return KeySet.import_key_set(dict(registration.jwks))  # type: ignore[arg-type]
        if registration.jwks_uri:
            try:
                response = requests.get(
                    registration.jwks_uri, timeout=(3.05, 5), headers={"Accept": "application/json"}
                )
                response.raise_for_status()
                return KeySet.import_key_set(response.json())
            except (requests.RequestException, ValueError, JoseError) as exc:
                from authlib.oauth2.rfc6749 import InvalidClientError

                raise InvalidClientError(
                    description="Could not fetch the client's JWKS from its jwks_uri"
                ) from exc
        from authlib.oauth2.rfc6749 import InvalidClientError

        raise InvalidClientError(description="The client has no registered public keys")

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
        from authlib.oauth2.rfc6749 import InvalidClientError

        try:
            token = jwt.decode(assertion, resolve_key, algorithms=CLIENT_ASSERTION_ALGORITHMS)
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description="The client assertion is not valid") from exc
        self.verify_claims(token.claims)
        exp = token.claims.get("exp")
        # SMART: the assertion's exp is at most five minutes in the future.
        if isinstance(exp, int | float) and exp > time.time() + 300 + self.leeway:
            raise InvalidClientError(description="The client assertion expires too far ahead")
        return token.claims


def load_signing_key(path: Path) -> RSAKey:
    """The EHR's id_token key: generated once, kept in the data folder."""
    if path.exists():
        return RSAKey.import_key(json.loads(path.read_text(encoding="utf-8")))
    key = RSAKey.generate_key(2048, private=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(key.as_dict(private=True)), encoding="utf-8")
    temporary.chmod(0o600)
    temporary.replace(path)
    return key


def _with_params(uri: str, params: Mapping[str, str | None]) -> str:
    parts = urlsplit(uri)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


class SandboxAuth:
    """Clients, launches, the authorization and token endpoints, and bearer checks."""

    def __init__(
        self,
        *,
        store: Store,
        ehr_base_url: str,
        fhir_base: str,
        clients: Sequence[ClientRegistration],
        signing_key: RSAKey,
        access_token_lifetime: int,
        practitioners: Callable[[], list[tuple[str, str]]],
        patients: Callable[[], list[tuple[str, str]]],
        latest_encounter: Callable[[str], str | None],
        rotate_refresh_tokens: bool = True,
        scope_version: str = "v2",
        list_pkce_methods: bool = True,
    ) -> None:
        #: False: a refresh returns no new refresh token and the old one stays valid.
        self.rotate_refresh_tokens = rotate_refresh_tokens
        #: "v1": grants written `.read`/`.write` and only permission-v1 advertised.
        self.scope_version = scope_version
        #: False: the configuration omits code_challenge_methods_supported (S256 still required).
        self.list_pkce_methods = list_pkce_methods
        self.store = store
        self.ehr_base_url = ehr_base_url.rstrip("/")
        self.fhir_base = fhir_base
        self.issuer = fhir_base
        self.clients = {c.client_id: c for c in clients}
        self.signing_key = signing_key
        self.kid = signing_key.thumbprint()
        self.access_token_lifetime = access_token_lifetime
        self.practitioners = practitioners
        self.patients = patients
        self.latest_encounter = latest_encounter
        self.authorization_endpoint = f"{self.ehr_base_url}/auth/authorize"
        self.token_endpoint = f"{self.ehr_base_url}/auth/token"
        self.revocation_endpoint = f"{self.ehr_base_url}/auth/revoke"
        self.jwks_uri = f"{self.ehr_base_url}/auth/jwks.json"
        self.style_url = f"{self.ehr_base_url}/auth/smart-style.json"
        self.server: AuthorizationServer | None = None
        #: appContext of launches and codes made from a CDS Hooks card (this process only,
        #: as launches are short-lived; the oldest go first past the cap).
        self._app_contexts: OrderedDict[str, str] = OrderedDict()
        self._app_context_lock = threading.Lock()

    # -- configuration documents ------------------------------------------------------
    def smart_configuration(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "authorization_endpoint": self.authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "revocation_endpoint": self.revocation_endpoint,
            "token_endpoint_auth_methods_supported": [
                "none",
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
            ],
            "token_endpoint_auth_signing_alg_values_supported": CLIENT_ASSERTION_ALGORITHMS,
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "scopes_supported": [
                "system/*.rs",
                "system/*.read",
                "openid",
                "fhirUser",
                "profile",
                "launch",
                "launch/patient",
                "launch/encounter",
                "offline_access",
                "online_access",
                "patient/*.rs",
                "patient/*.cruds",
                "user/*.rs",
                "user/*.cruds",
                "patient/*.read",
                "patient/*.write",
                "user/*.read",
                "user/*.write",
            ],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "capabilities": CAPABILITIES,
        }
        if self.scope_version == "v1":
            config["capabilities"] = [c for c in CAPABILITIES if c != "permission-v2"]
            config["scopes_supported"] = [
                s for s in config["scopes_supported"] if s.rsplit(".", 1)[-1] not in ("rs", "cruds")
            ]
        if not self.list_pkce_methods:
            del config["code_challenge_methods_supported"]
        return config

    def openid_configuration(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "authorization_endpoint": self.authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "fhirUser", "profile"],
            "claims_supported": [
                "iss",
                "sub",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "fhirUser",
                "profile",
                "name",
            ],
            "code_challenge_methods_supported": ["S256"],
        }

    def jwks(self) -> dict[str, Any]:
        public = self.signing_key.as_dict(private=False)
        public.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [public]}

    def practitioner_name(self, practitioner_id: str) -> str | None:
        return dict(self.practitioners()).get(practitioner_id)

    # -- launches ---------------------------------------------------------------------
    def remember_app_context(self, key: str, app_context: str) -> None:
        with self._app_context_lock:
            self._app_contexts[key] = app_context
            while len(self._app_contexts) > 1000:
                self._app_contexts.popitem(last=False)

    def take_app_context(self, key: str) -> str | None:
        with self._app_context_lock:
            return self._app_contexts.pop(key, None)

    def create_launch(
        self,
        *,
        patient: str | None,
        encounter: str | None,
        user: str,
        client_id: str | None = None,
        app_context: str | None = None,
    ) -> str:
        launch_id = secrets.token_urlsafe(18)
        if app_context is not None:
            self.remember_app_context(f"launch:{launch_id}", app_context)
        self.store.add_launch(
            launch_id,
            client_id=client_id,
            patient=patient,
            encounter=encounter,
            user=user,
            lifetime=LAUNCH_LIFETIME,
        )
        return launch_id

    def launch_url(self, client_id: str, launch_id: str) -> str | None:
        registration = self.clients.get(client_id)
        if registration is None or registration.launch_uri is None:
            return None
        return _with_params(registration.launch_uri, {"iss": self.fhir_base, "launch": launch_id})

    # -- bearer tokens ----------------------------------------------------------------
    def access_for(self, authorization: str | None) -> Access:
        """The Access an `Authorization: Bearer …` header grants, or a 401 FHIRError."""
        challenge = 'Bearer realm="sandbox-ehr"'
        if not authorization or not authorization.lower().startswith("bearer "):
            raise FHIRError(
                401,
                "login",
                "A bearer access token is required",
                headers={"WWW-Authenticate": challenge},
            )
        row = self.store.get_token(authorization[7:].strip())
        problem = None
        if row is None or row["access_revoked"]:
            problem = "The access token is not valid"
        elif row["expires_at"] < time.time():
            problem = "The access token has expired"
        if problem or row is None:
            header = f'{challenge}, error="invalid_token", error_description="{problem}"'
            raise FHIRError(
                401,
                "expired" if "expired" in str(problem) else "login",
                str(problem),
                headers={"WWW-Authenticate": header},
            )
        return Access(
            grant=smart_scopes.Grant(smart_scopes.split(row["scope"])),
            patient=row["patient"],
            user=row["user"] or None,
            client_id=row["client_id"],
        )

    # -- the authlib server -----------------------------------------------------------
    def init_app(self, app: Flask) -> None:
        server = AuthorizationServer(
            app, query_client=self._query_client, save_token=self._save_token
        )
        server.sandbox = self
        server.register_token_generator("default", self._generate_token)
        server.register_grant(
            SMARTAuthorizationCodeGrant, [CodeChallenge(required=True), SMARTOpenIDCode(self)]
        )
        server.register_grant(SMARTRefreshTokenGrant)
        server.register_grant(SMARTBackendServicesGrant)
        server.register_client_auth_method("private_key_jwt", PrivateKeyJWT(self))
        server.register_endpoint(SandboxRevocation)
        self.server = server

        app.add_url_rule(
            "/auth/authorize", "authorize", self.authorize_view, methods=["GET", "POST"]
        )
        app.add_url_rule("/auth/token", "token", self.token_view, methods=["POST"])
        app.add_url_rule("/auth/revoke", "revoke", self.revoke_view, methods=["POST"])
        app.add_url_rule("/auth/jwks.json", "jwks", lambda: _public_json(self.jwks()))
        app.add_url_rule("/auth/smart-style.json", "smart_style", lambda: _public_json(SMART_STYLE))
        app.add_url_rule(
            "/fhir/.well-known/smart-configuration",
            "smart_configuration",
            lambda: _public_json(self.smart_configuration()),
        )
        app.add_url_rule(
            "/fhir/.well-known/openid-configuration",
            "openid_configuration",
            lambda: _public_json(self.openid_configuration()),
        )

    def _query_client(self, client_id: str) -> Client | None:
        registration = self.clients.get(client_id)
        return Client(registration) if registration else None

    def _generate_token(
        self,
        grant_type: str,
        client: Client,
        user: EHRUser | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        granted = smart_scopes.split(scope)
        if self.scope_version == "v1":
            granted = smart_scopes.as_v1(granted)
        token: dict[str, Any] = {
            "access_token": secrets.token_urlsafe(32),
            "token_type": "Bearer",
            "expires_in": self.access_token_lifetime,
            "scope": " ".join(granted),
        }
        if include_refresh_token and ({"offline_access", "online_access"} & set(granted)):
            token["refresh_token"] = secrets.token_urlsafe(32)
        if user is not None:
            patient, encounter = self._context(user, granted)
            if patient:
                token["patient"] = patient
            if encounter:
                token["encounter"] = encounter
            # An EHR launch happens inside the EHR's chart, which shows its own banner.
            token["need_patient_banner"] = user.launch_type != "ehr"
            if user.app_context is not None:
                # CDS Hooks: a card's appContext reaches the app in the token response.
                token["appContext"] = user.app_context
        token["smart_style_url"] = self.style_url
        return token

    @staticmethod
    def _context(user: EHRUser, granted: Sequence[str]) -> tuple[str | None, str | None]:
        patient = user.patient if ("launch" in granted or "launch/patient" in granted) else None
        encounter = (
            user.encounter if ("launch" in granted or "launch/encounter" in granted) else None
        )
        return patient, encounter

    def _save_token(self, token: Mapping[str, Any], request: Any) -> None:
        # A backend-services token has no user: it acts as the client itself.
        user: EHRUser = request.user or EHRUser("", None, None, "system")
        now = time.time()
        code = request.authorization_code.code if request.authorization_code else None
        self.store.add_token(
            access_token=token["access_token"],
            refresh_token=token.get("refresh_token"),
            client_id=request.client.get_client_id(),
            scope=token["scope"],
            user=user.practitioner,
            patient=token.get("patient"),
            encounter=token.get("encounter"),
            launch_type=user.launch_type,
            code=code,
            issued_at=now,
            expires_at=now + self.access_token_lifetime,
            refresh_expires_at=now + REFRESH_LIFETIME if token.get("refresh_token") else None,
        )

    # -- views ------------------------------------------------------------------------
    def token_view(self) -> Response:
        assert self.server is not None
        response: Response = self.server.create_token_response()
        return response

    def revoke_view(self) -> Response:
        assert self.server is not None
        response: Response = self.server.create_endpoint_response(SandboxRevocation.ENDPOINT_NAME)
        return response

    def authorize_view(self) -> Any:
        assert self.server is not None
        params = request.values
        registration = self.clients.get(params.get("client_id", ""))
        if registration is None:
            return _error_page("Unknown app", "The client_id is not registered with this EHR.", 400)
        redirect_uri = params.get("redirect_uri")
        if not redirect_uri or redirect_uri not in registration.redirect_uris:
            return _error_page(
                "Redirect URI not registered",
                "The redirect_uri is missing or does not exactly match one registered for "
                f"{registration.client_name}.",
                400,
            )
        # SMART: aud must be this EHR's FHIR base URL exactly. A mismatch may be a
        # token-harvesting attempt, so no redirect is made at all.
        if params.get("aud") != self.fhir_base:
            return _error_page(
                "Wrong audience",
                f"The aud parameter must be this EHR's FHIR base URL, {self.fhir_base}.",
                400,
            )
        state = params.get("state")

        def refuse(error: str, description: str) -> Any:
            return redirect(
                _with_params(
                    redirect_uri, {"error": error, "error_description": description, "state": state}
                ),
                302,
            )

        if params.get("response_type") != "code":
            return refuse("unsupported_response_type", "response_type must be code")
        # authlib's CodeChallenge checks PKCE only at the token endpoint; SMART 2 requires
        # it at the authorization endpoint too, and S256 only.
        if not params.get("code_challenge"):
            return refuse("invalid_request", "Missing code_challenge: PKCE with S256 is required")
        if params.get("code_challenge_method") != "S256":
            return refuse("invalid_request", "code_challenge_method must be S256")
        requested = smart_scopes.split(params.get("scope"))
        launch = params.get("launch")
        if launch:
            if "launch" not in requested:
                return refuse("invalid_scope", "An EHR launch must request the launch scope")
            row = self.store.get_launch(launch)
            if row is None or (row["client_id"] and row["client_id"] != registration.client_id):
                return refuse(
                    "invalid_request", "Unknown or expired launch: relaunch the app from the EHR"
                )
            user = EHRUser(
                row["user"],
                row["patient"],
                row["encounter"],
                "ehr",
                self.take_app_context(f"launch:{launch}"),
            )
            # The clinician is already signed in to the EHR; the launch is the approval.
            return self._issue(user)
        if "launch" in requested:
            return refuse(
                "invalid_scope", "The launch scope needs a launch parameter (EHR launch only)"
            )
        if request.method == "GET" or "decision" not in request.form:
            return self._sign_in_page(registration, requested)
        if request.form.get("decision") != "approve":
            return refuse("access_denied", "The user did not approve the request")
        practitioner = request.form.get("user", "")
        if practitioner not in dict(self.practitioners()):
            return self._sign_in_page(registration, requested, "Choose who is signing in.")
        patient = request.form.get("patient") or None
        encounter = None
        if "launch/patient" in requested:
            if patient not in dict(self.patients()):
                return self._sign_in_page(registration, requested, "Choose a patient.")
            if "launch/encounter" in requested and patient:
                encounter = self.latest_encounter(patient)
        else:
            patient = None
        return self._issue(EHRUser(practitioner, patient, encounter, "standalone"))

    def _issue(self, user: EHRUser) -> Any:
        assert self.server is not None
        try:
            grant = self.server.get_consent_grant(end_user=user)
        except OAuth2Error as error:
            return self.server.handle_error_response(None, error)
        return self.server.create_authorization_response(grant_user=user, grant=grant)

    def _sign_in_page(
        self, registration: ClientRegistration, requested: list[str], problem: str | None = None
    ) -> Any:
        hidden = [
            (k, v)
            for k, v in request.values.items(multi=True)
            if k not in ("user", "patient", "decision")
        ]
        granted = smart_scopes.grant(requested, registration.scope)
        signed_in = request.cookies.get("ehr_user")
        body = render_template(
            "sandbox/authorize.html",
            client=registration,
            hidden=hidden,
            requested=requested,
            granted=granted,
            practitioners=self.practitioners(),
            patients=self.patients() if "launch/patient" in requested else None,
            selected_user=signed_in,
            problem=problem,
        )
        return Response(body, status=400 if problem else 200, mimetype="text/html")


def _public_json(data: Any) -> Response:
    response = Response(json.dumps(data, indent=2), mimetype="application/json")
    # Discovery documents, keys and the style sheet are public; browsers may fetch them.
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Cache-Control"] = "no-cache"
    return response


def _error_page(title: str, message: str, status: int) -> Response:
    body = render_template("sandbox/error.html", title=title, message=message)
    return Response(body, status=status, mimetype="text/html")

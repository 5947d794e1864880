"""Settings: read the environment (and an optional `.env`) once, in the app factory.

Every name is documented in README.md's configuration table and in the contract
(`SMARTAPP_*`). `Settings` is a frozen pydantic model whose validators say, in our words,
what is wrong; a bad value stops start-up with a ConfigError naming the variable, the fix
and where the value came from (the environment, the `.env` file, the instance folder).
Each value knows its source (`Settings.source_of`); no secret is ever in a repr or a dump.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    InstanceOf,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_serializer,
)
from pydantic_core import PydanticCustomError

#: The repository root: `launch.json` and `static/` live here in a checkout.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: An installed wheel's copy of them (setup.py puts them here at build time).
SHIPPED = Path(__file__).resolve().parent / "_shipped"


def shipped(name: str) -> Path:
    """`static` or `launch.json`: the installed package's copy, else the checkout's."""
    installed = SHIPPED / name
    return installed if installed.exists() else PROJECT_ROOT / name


#: In sandbox mode, with no SMARTAPP_ADMIN_USERS, this sandbox clinician may open /admin.
SANDBOX_ADMIN = "Practitioner/dr-rene-laennec"


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable and the fix."""


@dataclass(frozen=True, kw_only=True)
class LaunchManifest:
    """The registration manifest (`launch.json`) that IT enters into the EHR."""

    client_name: str
    client_id: str
    launch_uri: str
    redirect_uris: tuple[str, ...]
    scope: str
    token_endpoint_auth_method: str
    jwks_uri: str
    fhir_versions: tuple[str, ...]
    raw: Mapping[str, object] = field(repr=False)
    #: Where it was read from (None: built in code).
    path: Path | None = None

    @classmethod
    def load(cls, path: Path) -> LaunchManifest:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path} not found: the app needs its registration manifest") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from exc
        try:
            return cls(
                client_name=str(data["client_name"]),
                client_id=str(data["client_id"]),
                launch_uri=str(data["launch_uri"]),
                redirect_uris=tuple(str(u) for u in data["redirect_uris"]),
                scope=str(data["scope"]),
                token_endpoint_auth_method=str(data.get("token_endpoint_auth_method", "none")),
                jwks_uri=str(data.get("jwks_uri", "/.well-known/jwks.json")),
                fhir_versions=tuple(str(v) for v in data.get("fhir_versions", ["4.0.1"])),
                raw=data,
                path=path,
            )
        except KeyError as exc:
            raise ConfigError(f"{path}: missing required key {exc.args[0]!r}") from exc


def _split_list(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


def normalize_issuer(url: str) -> str:
    """FHIR base URLs compare without a trailing slash (`aud` must match `iss` exactly)."""
    return url.strip().rstrip("/")


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# -- where each value came from ------------------------------------------------------------

#: Where a value came from (`Settings.source_of`): the built-in default, the process
#: environment, the `.env` file (with its path), the instance folder (a generated secret,
#: with its path), `launch.json` (the client id), the sandbox (`smartapp sandbox`'s own
#: defaults), or a command's option (`--config`).
DEFAULT = "default"
ENVIRONMENT = "environment"
SANDBOX = "sandbox"


def dotenv_source(path: Path) -> str:
    return f".env ({path})"


class Environment(dict[str, str]):
    """The variables a command reads, and where each came from (`origin`).

    A plain mapping to everything that reads it; `read_environment` fills `origins` with
    `.env (<path>)` for the names only the `.env` file gave.
    """

    def __init__(
        self, values: Mapping[str, str] | None = None, *, origins: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(values or {})
        self.origins: dict[str, str] = dict(origins or {})

    def origin(self, name: str) -> str:
        """Where `name`'s value came from ("environment" unless recorded otherwise)."""
        return self.origins.get(name, ENVIRONMENT)

    def put(self, name: str, value: str, *, origin: str) -> None:
        self[name] = value
        self.origins[name] = origin


def origin_in(environ: Mapping[str, str], name: str) -> str:
    """Where `name` came from in `environ`: recorded by an `Environment`, else the process
    environment (a plain mapping is what the caller passed as the environment)."""
    return environ.origin(name) if isinstance(environ, Environment) else ENVIRONMENT


def read_environment(dotenv_path: Path | None = None) -> Environment:
    """`os.environ` over `.env` (the working directory's, or `dotenv_path`): what every
    command reads, so that `serve`, `check` and `evaluate` see the same settings.

    The environment wins over the file, name by name; each name the file alone gave is
    recorded as coming from `.env (<path>)`.
    """
    env_file = dotenv_path or Path.cwd() / ".env"
    file_values = dotenv_values(env_file) if env_file.exists() else {}
    merged = Environment()
    for name, value in file_values.items():
        if value is not None:
            merged.put(name, value, origin=dotenv_source(env_file.resolve()))
    for name, value in os.environ.items():
        merged.put(name, value, origin=ENVIRONMENT)
    return merged


def _where(source: str) -> str:
    """A value's source as the end of an error message: where to go and fix it."""
    if source == ENVIRONMENT:
        return "set in the environment"
    if source.startswith(".env (") or source.startswith("instance ("):
        return f"set in {source[source.index('(') + 1 : -1]}"
    return f"from {source}"


# -- the variables, and what each accepts ----------------------------------------------------

#: Each setting and the variable it is read from (README's configuration table lists them).
VARIABLES: Mapping[str, str] = {
    "instance_path": "SMARTAPP_INSTANCE_PATH",
    "manifest": "SMARTAPP_LAUNCH_JSON",
    "allowed_issuers": "SMARTAPP_ALLOWED_ISSUERS",
    "client_id": "SMARTAPP_CLIENT_ID",
    "client_secret": "SMARTAPP_CLIENT_SECRET",
    "private_key_path": "SMARTAPP_PRIVATE_KEY",
    "public_url": "SMARTAPP_PUBLIC_URL",
    "database_url": "SMARTAPP_DATABASE_URL",
    "secret_key": "SMARTAPP_SECRET_KEY",
    "previous_secret_keys": "SMARTAPP_PREVIOUS_SECRET_KEYS",
    "site_config_path": "SMARTAPP_CONFIG",
    "cds_clients_path": "SMARTAPP_CDS_CLIENTS",
    "admin_users": "SMARTAPP_ADMIN_USERS",
    "admin_token": "SMARTAPP_ADMIN_TOKEN",
    "llm_base_url": "SMARTAPP_LLM_BASE_URL",
    "llm_model": "SMARTAPP_LLM_MODEL",
    "llm_api_key": "SMARTAPP_LLM_API_KEY",
    "llm_concurrency": "SMARTAPP_LLM_CONCURRENCY",
    "frame_ancestors": "SMARTAPP_FRAME_ANCESTORS",
    "log_format": "SMARTAPP_LOG_FORMAT",
    "snapshot_ttl_seconds": "SMARTAPP_SNAPSHOT_TTL",
    "max_pages": "SMARTAPP_MAX_PAGES",
    "phi_retention_days": "SMARTAPP_PHI_RETENTION_DAYS",
    "fhir_deadline_seconds": "SMARTAPP_FHIR_DEADLINE",
    "fhir_max_response_mb": "SMARTAPP_FHIR_MAX_MB",
    "store_wait_seconds": "SMARTAPP_STORE_WAIT_SECONDS",
    "outbox_retry_seconds": "SMARTAPP_OUTBOX_RETRY_SECONDS",
    "redis_url": "SMARTAPP_REDIS_URL",
    "sign_in_rate_limit": "SMARTAPP_SIGNIN_RATE_LIMIT",
    "admin_auth_rate_limit": "SMARTAPP_ADMIN_AUTH_RATE_LIMIT",
    "proxy_hops": "SMARTAPP_PROXY_HOPS",
    "request_timing_log": "SMARTAPP_REQUEST_TIMING_LOG",
    "migrate_on_start": "SMARTAPP_MIGRATE_ON_START",
    "window_sessions": "SMARTAPP_WINDOW_SESSIONS",
    "prefetch_chart": "SMARTAPP_PREFETCH_CHART",
}
_FIELD_OF = {variable: name for name, variable in VARIABLES.items()}

#: Settings never shown by `repr`, `str` or `model_dump` (a traceback, a debugger, a log).
SECRET_FIELDS = (
    "secret_key",
    "previous_secret_keys",
    "client_secret",
    "admin_token",
    "llm_api_key",
)
#: URLs that may carry a password (the store's, Redis's, an LLM proxy's): shown without it.
URL_FIELDS = ("database_url", "redis_url", "llm_base_url")
#: Read as typed values: blank (only spaces) is unset, as for the flags before.
_BLANK_IS_UNSET = frozenset(
    {"migrate_on_start", "window_sessions", "prefetch_chart", "request_timing_log"}
)


def invalid(message: str) -> PydanticCustomError:
    """A setting's error in our words: the variable, what it holds, what it should."""
    return PydanticCustomError("setting", "{message}", {"message": message})


def _variable(info: ValidationInfo) -> str:
    return VARIABLES.get(info.field_name or "", info.field_name or "?")


def _at_least(minimum: int, means: str) -> BeforeValidator:
    """A whole number of at least `minimum`; `means` says what it counts, for the message."""

    def check(value: Any, info: ValidationInfo) -> int:
        name = _variable(info)
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value))
            except ValueError:
                raise invalid(f"{name}={value!r} is not a whole number") from None
        if number < minimum:
            raise invalid(f"{name} must be at least {minimum}{means}, got {number}")
        return number

    return BeforeValidator(check)


def _yes_no(value: Any, info: ValidationInfo) -> bool:
    if isinstance(value, bool):
        return value
    raw = str(value).strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise invalid(f"{_variable(info)}={raw!r}: use true or false")


def _rate_limit(value: Any, info: ValidationInfo) -> str:
    from limits import parse_many

    text = str(value).strip()
    try:
        parse_many(text)
    except ValueError:
        raise invalid(
            f"{_variable(info)}={text!r} is not a rate limit (e.g. '60 per minute' or '10/minute')"
        ) from None
    return text


def _names(value: Any) -> tuple[str, ...]:
    """A comma-separated list (a tuple given in code stays as it is)."""
    return _split_list(value) if isinstance(value, str) else tuple(value)


def _issuers(value: Any) -> tuple[str, ...]:
    issuers = tuple(normalize_issuer(i) for i in _names(value))
    for issuer in issuers:
        parts = urlsplit(issuer)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise invalid(
                f"SMARTAPP_ALLOWED_ISSUERS: {issuer!r} is not an absolute http(s) FHIR base URL"
            )
    return issuers


def _existing_file(what: str = "") -> BeforeValidator:
    def check(value: Any, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        if not Path(value).is_file():
            raise invalid(f"{_variable(info)}={str(value)!r}: no such file{what}")
        return Path(value)

    return BeforeValidator(check)


def _public_url(value: Any) -> str | None:
    if value is None:
        return None
    url = str(value).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query:
        raise invalid(
            f"SMARTAPP_PUBLIC_URL={url!r} is not an absolute http(s) base URL "
            "(e.g. https://smartapp.hospital.org)"
        )
    return url


def _log_format(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("json", "text"):
        raise invalid(f"SMARTAPP_LOG_FORMAT={text!r}: use json or text")
    return text


def _redis_url(value: Any) -> str | None:
    if value is not None and urlsplit(str(value)).scheme not in ("redis", "rediss", "unix"):
        # The URL is not repeated: it may hold the Redis password.
        raise invalid(
            "SMARTAPP_REDIS_URL must be a redis:// or rediss:// URL (it holds the rate "
            "limits shared by the app's processes)"
        )
    return None if value is None else str(value)


def _base_url(value: Any) -> str | None:
    return (str(value) if value is not None else "").rstrip("/") or None


def _optional_path(value: Any) -> Path | None:
    text = "" if value is None else str(value).strip()
    return Path(text) if text else None


Names = Annotated[tuple[str, ...], BeforeValidator(_names)]
YesNo = Annotated[bool, BeforeValidator(_yes_no)]
RateLimit = Annotated[str, BeforeValidator(_rate_limit)]


@dataclass(frozen=True, kw_only=True)
class SettingValue:
    """One setting as `smartapp check` and the admin show it: never a secret's value."""

    name: str
    value: str
    source: str
    secret: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "source": self.source,
            "secret": self.secret,
        }


class _Shown(str):
    """A value as `repr` prints it (no quotes added)."""

    def __repr__(self) -> str:
        return str(self)


class Settings(BaseModel):
    """The app's settings, validated; `from_env` reads them and records each one's source.

    Secrets keep their plain `str` type (every reader passes them on as they are) and are
    kept out of `repr`, `str` and `model_dump` instead; URLs lose their password there.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    instance_path: Path
    manifest: InstanceOf[LaunchManifest]
    allowed_issuers: Annotated[tuple[str, ...], BeforeValidator(_issuers)]
    client_id: str
    database_url: str
    secret_key: str
    #: Keys being rotated out: what they encrypted still reads (SMARTAPP_PREVIOUS_SECRET_KEYS).
    previous_secret_keys: Names = ()
    client_secret: str | None = None
    private_key_path: Annotated[Path | None, _existing_file(" (PEM or JWK)")] = None
    public_url: Annotated[str | None, BeforeValidator(_public_url)] = None
    site_config_path: Annotated[Path | None, _existing_file()] = None
    #: The EHRs registered to call the CDS Hooks service (SMARTAPP_CDS_CLIENTS, TOML).
    cds_clients_path: Annotated[
        Path | None,
        _existing_file(" (the EHRs that may call the CDS Hooks service, with their JWKS)"),
    ] = None
    admin_users: Names = ()
    admin_token: str | None = None
    llm_base_url: Annotated[str | None, BeforeValidator(_base_url)] = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    #: LLM requests this process makes at once; more kinds wait for a free slot.
    llm_concurrency: Annotated[int, _at_least(1, " (LLM requests one process makes at once)")] = 8
    #: Origins allowed to frame the sidebar (CSP frame-ancestors). Defaults to the issuers' origins.
    frame_ancestors: Names = ()
    #: Seconds a chart snapshot is reused within one launch before it is read again.
    snapshot_ttl_seconds: Annotated[
        int, _at_least(1, " (seconds a launch reuses the chart it read)")
    ] = 300
    #: Most pages followed per search before a result set is reported as truncated.
    max_pages: Annotated[
        int, _at_least(1, " (pages followed per search; 1 reads the first page only)")
    ] = 20
    #: Days the clinicians' texts (edits, comments, delivered notes) are kept for
    #: governance before `smartapp purge` clears them (SMARTAPP_PHI_RETENTION_DAYS).
    phi_retention_days: Annotated[
        int,
        _at_least(1, " (days clinicians' texts are kept before `smartapp purge` clears them)"),
    ] = 30
    #: Seconds one FHIR request may take in all (connect, answer, retries): SMARTAPP_FHIR_DEADLINE.
    fhir_deadline_seconds: Annotated[
        int, _at_least(1, " (seconds one FHIR request may take, retries included)")
    ] = 30
    #: The largest FHIR answer read, in MiB (SMARTAPP_FHIR_MAX_MB): larger ones are refused.
    fhir_max_response_mb: Annotated[
        int, _at_least(1, " (MiB: the largest FHIR answer the app reads)")
    ] = 32
    #: Seconds a request waits for a locked store before answering 503 store_unavailable
    #: (SMARTAPP_STORE_WAIT_SECONDS); None: smartapp.db's default (10 s).
    store_wait_seconds: Annotated[
        int | None,
        _at_least(1, " (seconds a request waits for a locked store before answering 503)"),
    ] = None
    #: Seconds before the first retry of a note the EHR could not take, doubling after
    #: each failure up to an hour (SMARTAPP_OUTBOX_RETRY_SECONDS).
    outbox_retry_seconds: Annotated[
        int, _at_least(1, " (seconds before a note the EHR could not take is tried again)")
    ] = 15
    #: Where rate-limit counters live (SMARTAPP_REDIS_URL); None: in each process.
    redis_url: Annotated[str | None, BeforeValidator(_redis_url)] = None
    #: Per client address, on /launch, /callback and /admin/signin each.
    sign_in_rate_limit: RateLimit = "60 per minute"
    #: Per client address: refused admin credentials (a wrong bearer token).
    admin_auth_rate_limit: RateLimit = "10 per minute"
    #: Reverse proxies in front of the app whose X-Forwarded-For is trusted (rate limits).
    proxy_hops: Annotated[int, _at_least(0, " (reverse proxies in front of the app)")] = 0
    #: "json" (one object per line, with the request id) or "text".
    log_format: Annotated[str, BeforeValidator(_log_format)] = "json"
    #: Where each process appends one JSON line per request with its server-side time and
    #: CPU (SMARTAPP_REQUEST_TIMING_LOG; `make load` reads it); None: not written.
    request_timing_log: Annotated[Path | None, BeforeValidator(_optional_path)] = None
    static_folder: Path = Field(default_factory=lambda: shipped("static"))
    sandbox_mode: bool = False
    #: Migrate the store when the app starts (sandbox mode, or SMARTAPP_MIGRATE_ON_START);
    #: otherwise `smartapp db upgrade` does it before the processes start.
    migrate_on_start: YesNo = False
    #: A sidebar whose session cookie never arrives (third-party cookies blocked) may carry
    #: its launch in a per-window token (SMARTAPP_WINDOW_SESSIONS; see docs/SECURITY.md).
    window_sessions: YesNo = True
    #: Read a launch's chart as soon as its token arrives at /callback, in the background,
    #: before the sidebar asks (SMARTAPP_PREFETCH_CHART).
    prefetch_chart: YesNo = True
    #: SMARTAPP_SECRET_KEY was given (not generated in the instance folder): what several
    #: processes need.
    secret_key_from_env: bool = False

    #: field -> where its value came from (`from_env` records it).
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    # -- never a secret in a repr, a str or a dump ---------------------------------------

    def __repr_args__(self) -> Iterator[tuple[str, Any]]:
        """Every setting but the secrets (shown as '***') and the URLs' passwords."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in SECRET_FIELDS:
                yield name, None if value is None else (() if value == () else "***")
            elif name in URL_FIELDS:
                yield name, None if value is None else hide_password(value)
            elif name == "manifest":
                yield name, _Shown(f"LaunchManifest(client_id={value.client_id!r})")
            else:
                yield name, value

    def __str__(self) -> str:
        return repr(self)

    @field_serializer(*SECRET_FIELDS)
    def _dump_secret(self, value: str | tuple[str, ...] | None) -> str | None:
        return None if value is None else ("" if value == () else "***")

    @field_serializer(*URL_FIELDS)
    def _dump_url(self, value: str | None) -> str | None:
        return None if value is None else hide_password(value)

    # -- where each value came from ------------------------------------------------------

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; a value `update` changes is no longer from where the original's came."""
        copied = super().model_copy(update=update, deep=deep)
        copied._sources = {k: v for k, v in self._sources.items() if k not in (update or {})}
        return copied

    def source_of(self, name: str) -> str:
        """Where a setting's value came from, by variable (`SMARTAPP_MAX_PAGES`) or field
        name: "default", "environment", ".env (<path>)", "instance (<path>)" (a generated
        secret key), "launch.json (<path>)", "sandbox", "--config"; "given" for a value
        passed in code."""
        field = _FIELD_OF.get(name, name)
        if field not in type(self).model_fields:
            raise KeyError(f"{name!r} is not a setting")
        if field in self._sources:
            return self._sources[field]
        return "given" if field in self.model_fields_set else DEFAULT

    def described(self) -> tuple[SettingValue, ...]:
        """Every SMARTAPP_* setting with its value (never a secret's: "(secret, set)") and
        its source, in the order of README's table: what `smartapp check` prints."""
        return tuple(
            SettingValue(
                name=variable,
                value=self._shown(field),
                source=self.source_of(field),
                secret=field in SECRET_FIELDS,
            )
            for field, variable in VARIABLES.items()
        )

    def _shown(self, field: str) -> str:
        value = getattr(self, field)
        if field in SECRET_FIELDS:
            if field == "secret_key" and not value:
                return "(secret, generated at the first start)"
            return "(secret, set)" if value else "(unset)"
        if value is None or value == ():
            return "(unset)"
        if field in URL_FIELDS:
            return hide_password(value)
        if field == "manifest":
            return str(value.path or "launch.json")
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, tuple):
            return ", ".join(value)
        return str(value)

    def require_public_url(self) -> None:
        """The app's own URLs (redirect_uri above all) come from SMARTAPP_PUBLIC_URL.

        Built from the request's Host header instead, anyone who can send the app a Host
        (a proxy left open, a DNS rebinding) would choose where the EHR sends the code.
        The sandbox, on loopback only, may go without.
        """
        if not self.public_url and not self.sandbox_mode:
            raise ConfigError(
                "SMARTAPP_PUBLIC_URL is not set: give the app's external base URL "
                "(e.g. https://smartapp.hospital.org), from which its redirect URI is built"
            )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        sandbox_issuer: str | None = None,
        dotenv_path: Path | None = None,
        create_instance: bool = True,
    ) -> Settings:
        """Build settings from `environ` (default: `os.environ` over `.env`).

        `sandbox_issuer` is the embedded EHR's FHIR base, which becomes the default
        allow-list in sandbox mode. A bad value raises ConfigError naming the variable,
        the fix and where the value came from. `create_instance=False` (what `smartapp
        check` asks) writes nothing: the instance folder is not made, and a secret key
        not yet generated reads as "" (source "instance (<path>, not generated yet)").
        """
        if environ is None:
            environ = read_environment(dotenv_path)
        reader = _Reader(environ)
        sandbox = sandbox_issuer is not None

        instance_path = Path(reader.take("instance_path", Path.cwd() / "instance"))
        if create_instance:
            try:
                # Owner-only: it holds the SQLite store (PHI) and the generated secret key.
                instance_path.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise reader.error(
                    "instance_path",
                    f"SMARTAPP_INSTANCE_PATH={str(instance_path)!r}: the instance folder "
                    f"cannot be made ({type(exc).__name__}); name a folder the app may write",
                ) from None

        manifest_path = Path(reader.take("manifest", shipped("launch.json")))
        try:
            manifest = LaunchManifest.load(manifest_path)
        except ConfigError as exc:
            raise reader.error("manifest", str(exc)) from None
        reader.values["manifest"] = manifest

        given = reader.take("allowed_issuers", "")
        issuers = tuple(normalize_issuer(i) for i in _split_list(given))
        if sandbox_issuer and normalize_issuer(sandbox_issuer) not in issuers:
            # In sandbox mode the embedded EHR is always allowed, beside any configured ones.
            issuers = (*issuers, normalize_issuer(sandbox_issuer))
            reader.sources["allowed_issuers"] = (
                f"{reader.sources['allowed_issuers']} + {SANDBOX}" if given else SANDBOX
            )
        reader.values["allowed_issuers"] = issuers

        reader.take("client_id", manifest.client_id, source=f"launch.json ({manifest_path})")
        reader.take("database_url", f"sqlite:///{instance_path / 'smartapp.db'}", source=DEFAULT)
        secret_file = instance_path / "secret_key"
        if reader.given("secret_key"):
            reader.take("secret_key")
        elif create_instance or secret_file.exists():
            reader.take(
                "secret_key", _instance_secret(instance_path), source=f"instance ({secret_file})"
            )
        else:
            reader.take("secret_key", "", source=f"instance ({secret_file}, not generated yet)")
        reader.take(
            "frame_ancestors",
            tuple(dict.fromkeys(origin_of(i) for i in issuers)),
            source=DEFAULT,
        )
        if sandbox_issuer:
            sandbox_admin = f"{normalize_issuer(sandbox_issuer)}|{SANDBOX_ADMIN}"
            reader.take("admin_users", (sandbox_admin,), source=SANDBOX)
        if sandbox:
            reader.take("migrate_on_start", True, source=SANDBOX)
        for name in VARIABLES:
            if name not in reader.values:
                reader.take(name)
        try:
            settings = cls.model_validate(
                {
                    **reader.values,
                    "sandbox_mode": sandbox,
                    "secret_key_from_env": reader.given("secret_key"),
                }
            )
        except ValidationError as exc:
            raise _config_error(exc, reader.sources) from None
        settings._sources.update(reader.sources)
        return settings


class _Reader:
    """Takes each setting's raw value from the environment, remembering its source."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}

    def given(self, field: str) -> bool:
        """Whether the environment sets this field's variable (blank is unset)."""
        raw = self.environ.get(VARIABLES[field])
        if raw is None or raw == "":
            return False
        return bool(raw.strip()) or field not in _BLANK_IS_UNSET

    def take(self, field: str, default: Any = None, *, source: str = DEFAULT) -> Any:
        """The variable's value when set, else `default` (recorded from `source`; with no
        default the field keeps the model's own)."""
        variable = VARIABLES[field]
        if self.given(field):
            value: Any = self.environ[variable]
            self.sources[field] = origin_in(self.environ, variable)
        else:
            value = default
            self.sources[field] = source
        if value is not None:
            self.values[field] = value
        return value

    def error(self, field: str, message: str) -> ConfigError:
        return ConfigError(f"{message} ({_where(self.sources.get(field, DEFAULT))})")


def _config_error(exc: ValidationError, sources: Mapping[str, str]) -> ConfigError:
    """Pydantic's errors as ours: one line per bad setting, naming the variable, the fix
    and where the value came from; never a traceback of the validators."""
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        variable = VARIABLES.get(field, field)
        if error["type"] == "setting":
            message = str((error.get("ctx") or {})["message"])
        else:
            # A type no environment gives (a value passed in code): pydantic's words, not
            # the value (it may be a secret).
            message = f"{variable}: {error['msg']}"
        lines.append(f"{message} ({_where(sources.get(field, DEFAULT))})")
    return ConfigError("\n".join(lines))


def hide_password(url: str) -> str:
    """`url` with its password (if any) as `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def require_shared_secret(settings: Settings, what: str) -> None:
    """Several processes must share one SMARTAPP_SECRET_KEY (a launch begun in one and
    finished in another is refused otherwise, and tokens one encrypted the others cannot
    read): refuse to start them on a key generated in one instance folder."""
    if not settings.secret_key_from_env:
        raise ConfigError(
            f"SMARTAPP_SECRET_KEY is not set: {what} runs beside other processes, which "
            "must all use the same key. Set it (e.g. `python -c 'import secrets; "
            "print(secrets.token_urlsafe(48))'`) in every process's environment"
        )


def _instance_secret(instance_path: Path) -> str:
    """A signing key generated once and kept (0600) in the instance folder."""
    path = instance_path / "secret_key"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key)
    return key

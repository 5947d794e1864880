"""Settings: read the environment (and an optional `.env`) once, in the app factory.

Every name is documented in README.md's configuration table and in the contract
(`SMARTAPP_*`). A bad value stops start-up with a message naming the variable.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

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


def _whole_number(
    environ: Mapping[str, str], name: str, default: int, *, minimum: int = 0, means: str = ""
) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}{means}, got {value}")
    return value


def _rate_limit(environ: Mapping[str, str], name: str, default: str) -> str:
    from limits import parse_many

    value = (environ.get(name) or default).strip()
    try:
        parse_many(value)
    except ValueError:
        raise ConfigError(
            f"{name}={value!r} is not a rate limit (e.g. '60 per minute' or '10/minute')"
        ) from None
    return value


def _yes_no(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = (environ.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: use true or false")


def read_environment(dotenv_path: Path | None = None) -> dict[str, str]:
    """`os.environ` over `.env` (the working directory's, or `dotenv_path`): what every
    command reads, so that `serve`, `check` and `evaluate` see the same settings."""
    env_file = dotenv_path or Path.cwd() / ".env"
    file_values = dotenv_values(env_file) if env_file.exists() else {}
    merged = {k: v for k, v in file_values.items() if v is not None}
    merged.update(os.environ)
    return merged


#: Settings never shown by `repr` (a traceback, a debugger, a log line).
SECRET_FIELDS = (
    "secret_key",
    "previous_secret_keys",
    "client_secret",
    "admin_token",
    "llm_api_key",
)


@dataclass(frozen=True, kw_only=True, repr=False)
class Settings:
    instance_path: Path
    manifest: LaunchManifest
    allowed_issuers: tuple[str, ...]
    client_id: str
    database_url: str
    secret_key: str
    #: Keys being rotated out: what they encrypted still reads (SMARTAPP_PREVIOUS_SECRET_KEYS).
    previous_secret_keys: tuple[str, ...] = ()
    client_secret: str | None = None
    private_key_path: Path | None = None
    public_url: str | None = None
    site_config_path: Path | None = None
    #: The EHRs registered to call the CDS Hooks service (SMARTAPP_CDS_CLIENTS, TOML).
    cds_clients_path: Path | None = None
    admin_users: tuple[str, ...] = ()
    admin_token: str | None = None
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    #: LLM requests this process makes at once; more kinds wait for a free slot.
    llm_concurrency: int = 8
    #: Origins allowed to frame the sidebar (CSP frame-ancestors). Defaults to the issuers' origins.
    frame_ancestors: tuple[str, ...] = ()
    #: Seconds a chart snapshot is reused within one launch before it is read again.
    snapshot_ttl_seconds: int = 300
    #: Most pages followed per search before a result set is reported as truncated.
    max_pages: int = 20
    #: Days the clinicians' texts (edits, comments, delivered notes) are kept for
    #: governance before `smartapp purge` clears them (SMARTAPP_PHI_RETENTION_DAYS).
    phi_retention_days: int = 30
    #: Seconds one FHIR request may take in all (connect, answer, retries): SMARTAPP_FHIR_DEADLINE.
    fhir_deadline_seconds: int = 30
    #: The largest FHIR answer read, in MiB (SMARTAPP_FHIR_MAX_MB): larger ones are refused.
    fhir_max_response_mb: int = 32
    #: Seconds a request waits for a locked store before answering 503 store_unavailable
    #: (SMARTAPP_STORE_WAIT_SECONDS); None: smartapp.db's default (10 s).
    store_wait_seconds: int | None = None
    #: Seconds before the first retry of a note the EHR could not take, doubling after
    #: each failure up to an hour (SMARTAPP_OUTBOX_RETRY_SECONDS).
    outbox_retry_seconds: int = 15
    #: Where rate-limit counters live (SMARTAPP_REDIS_URL); None: in each process.
    redis_url: str | None = None
    #: Per client address, on /launch, /callback and /admin/signin each.
    sign_in_rate_limit: str = "60 per minute"
    #: Per client address: refused admin credentials (a wrong bearer token).
    admin_auth_rate_limit: str = "10 per minute"
    #: Reverse proxies in front of the app whose X-Forwarded-For is trusted (rate limits).
    proxy_hops: int = 0
    #: "json" (one object per line, with the request id) or "text".
    log_format: str = "json"
    #: Where each process appends one JSON line per request with its server-side time and
    #: CPU (SMARTAPP_REQUEST_TIMING_LOG; `make load` reads it); None: not written.
    request_timing_log: Path | None = None
    static_folder: Path = field(default_factory=lambda: shipped("static"))
    sandbox_mode: bool = False
    #: Migrate the store when the app starts (sandbox mode, or SMARTAPP_MIGRATE_ON_START);
    #: otherwise `smartapp db upgrade` does it before the processes start.
    migrate_on_start: bool = False
    #: A sidebar whose session cookie never arrives (third-party cookies blocked) may carry
    #: its launch in a per-window token (SMARTAPP_WINDOW_SESSIONS; see docs/SECURITY.md).
    window_sessions: bool = True
    #: Read a launch's chart as soon as its token arrives at /callback, in the background,
    #: before the sidebar asks (SMARTAPP_PREFETCH_CHART).
    prefetch_chart: bool = True
    #: SMARTAPP_SECRET_KEY was given (not generated in the instance folder): what several
    #: processes need.
    secret_key_from_env: bool = False

    def __repr__(self) -> str:
        """Every setting but the secrets (shown as '***') and the database password."""
        return _settings_repr(self)

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
    ) -> Settings:
        """Build settings from `environ` (default: `os.environ` over `.env`).

        `sandbox_issuer` is the embedded EHR's FHIR base, which becomes the default
        allow-list in sandbox mode.
        """
        if environ is None:
            environ = read_environment(dotenv_path)

        instance_path = Path(environ.get("SMARTAPP_INSTANCE_PATH") or Path.cwd() / "instance")
        # Owner-only: it holds the SQLite store (PHI) and the generated secret key.
        instance_path.mkdir(mode=0o700, parents=True, exist_ok=True)

        manifest_path = Path(environ.get("SMARTAPP_LAUNCH_JSON") or shipped("launch.json"))
        manifest = LaunchManifest.load(manifest_path)

        issuers = tuple(
            normalize_issuer(i) for i in _split_list(environ.get("SMARTAPP_ALLOWED_ISSUERS"))
        )
        if sandbox_issuer and normalize_issuer(sandbox_issuer) not in issuers:
            # In sandbox mode the embedded EHR is always allowed, beside any configured ones.
            issuers = (*issuers, normalize_issuer(sandbox_issuer))
        for issuer in issuers:
            if urlsplit(issuer).scheme not in ("https", "http") or not urlsplit(issuer).netloc:
                raise ConfigError(
                    f"SMARTAPP_ALLOWED_ISSUERS: {issuer!r} is not an absolute http(s) FHIR base URL"
                )

        private_key = environ.get("SMARTAPP_PRIVATE_KEY") or None
        if private_key and not Path(private_key).is_file():
            raise ConfigError(f"SMARTAPP_PRIVATE_KEY={private_key!r}: no such file (PEM or JWK)")

        # The same rule as `smartapp.siteconfig.site_file_path` (check, evaluate, draft).
        site_config = environ.get("SMARTAPP_CONFIG") or None
        if site_config and not Path(site_config).is_file():
            raise ConfigError(f"SMARTAPP_CONFIG={site_config!r}: no such file")

        cds_clients = environ.get("SMARTAPP_CDS_CLIENTS") or None
        if cds_clients and not Path(cds_clients).is_file():
            raise ConfigError(
                f"SMARTAPP_CDS_CLIENTS={cds_clients!r}: no such file (the EHRs that may call "
                "the CDS Hooks service, with their JWKS)"
            )

        public_url = environ.get("SMARTAPP_PUBLIC_URL") or None
        if public_url:
            public_url = public_url.rstrip("/")
            parts = urlsplit(public_url)
            if parts.scheme not in ("https", "http") or not parts.netloc or parts.query:
                raise ConfigError(
                    f"SMARTAPP_PUBLIC_URL={public_url!r} is not an absolute http(s) base URL "
                    "(e.g. https://smartapp.hospital.org)"
                )

        frame_ancestors = _split_list(environ.get("SMARTAPP_FRAME_ANCESTORS"))
        if not frame_ancestors:
            frame_ancestors = tuple(dict.fromkeys(origin_of(i) for i in issuers))

        log_format = (environ.get("SMARTAPP_LOG_FORMAT") or "json").strip().lower()
        if log_format not in ("json", "text"):
            raise ConfigError(f"SMARTAPP_LOG_FORMAT={log_format!r}: use json or text")

        timing_log = (environ.get("SMARTAPP_REQUEST_TIMING_LOG") or "").strip()
        redis_url = environ.get("SMARTAPP_REDIS_URL") or None
        if redis_url and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                "SMARTAPP_REDIS_URL must be a redis:// or rediss:// URL (it holds the rate "
                "limits shared by the app's processes)"
            )

        return cls(
            log_format=log_format,
            request_timing_log=Path(timing_log) if timing_log else None,
            redis_url=redis_url,
            sign_in_rate_limit=_rate_limit(environ, "SMARTAPP_SIGNIN_RATE_LIMIT", "60 per minute"),
            admin_auth_rate_limit=_rate_limit(
                environ, "SMARTAPP_ADMIN_AUTH_RATE_LIMIT", "10 per minute"
            ),
            proxy_hops=_whole_number(
                environ,
                "SMARTAPP_PROXY_HOPS",
                0,
                means=" (reverse proxies in front of the app)",
            ),
            instance_path=instance_path,
            manifest=manifest,
            allowed_issuers=issuers,
            client_id=environ.get("SMARTAPP_CLIENT_ID") or manifest.client_id,
            client_secret=environ.get("SMARTAPP_CLIENT_SECRET") or None,
            private_key_path=Path(private_key) if private_key else None,
            public_url=public_url,
            database_url=environ.get("SMARTAPP_DATABASE_URL")
            or f"sqlite:///{instance_path / 'smartapp.db'}",
            secret_key=environ.get("SMARTAPP_SECRET_KEY") or _instance_secret(instance_path),
            previous_secret_keys=_split_list(environ.get("SMARTAPP_PREVIOUS_SECRET_KEYS")),
            site_config_path=Path(site_config) if site_config else None,
            cds_clients_path=Path(cds_clients) if cds_clients else None,
            admin_users=_split_list(environ.get("SMARTAPP_ADMIN_USERS"))
            or ((f"{normalize_issuer(sandbox_issuer)}|{SANDBOX_ADMIN}",) if sandbox_issuer else ()),
            admin_token=environ.get("SMARTAPP_ADMIN_TOKEN") or None,
            llm_base_url=(environ.get("SMARTAPP_LLM_BASE_URL") or "").rstrip("/") or None,
            llm_model=environ.get("SMARTAPP_LLM_MODEL") or None,
            llm_api_key=environ.get("SMARTAPP_LLM_API_KEY") or None,
            llm_concurrency=_whole_number(
                environ,
                "SMARTAPP_LLM_CONCURRENCY",
                8,
                minimum=1,
                means=" (LLM requests one process makes at once)",
            ),
            frame_ancestors=frame_ancestors,
            snapshot_ttl_seconds=_whole_number(
                environ,
                "SMARTAPP_SNAPSHOT_TTL",
                300,
                minimum=1,
                means=" (seconds a launch reuses the chart it read)",
            ),
            phi_retention_days=_whole_number(
                environ,
                "SMARTAPP_PHI_RETENTION_DAYS",
                30,
                minimum=1,
                means=" (days clinicians' texts are kept before `smartapp purge` clears them)",
            ),
            max_pages=_whole_number(
                environ,
                "SMARTAPP_MAX_PAGES",
                20,
                minimum=1,
                means=" (pages followed per search; 1 reads the first page only)",
            ),
            fhir_deadline_seconds=_whole_number(
                environ,
                "SMARTAPP_FHIR_DEADLINE",
                30,
                minimum=1,
                means=" (seconds one FHIR request may take, retries included)",
            ),
            fhir_max_response_mb=_whole_number(
                environ,
                "SMARTAPP_FHIR_MAX_MB",
                32,
                minimum=1,
                means=" (MiB: the largest FHIR answer the app reads)",
            ),
            store_wait_seconds=_whole_number(
                environ,
                "SMARTAPP_STORE_WAIT_SECONDS",
                10,
                minimum=1,
                means=" (seconds a request waits for a locked store before answering 503)",
            )
            if environ.get("SMARTAPP_STORE_WAIT_SECONDS")
            else None,
            outbox_retry_seconds=_whole_number(
                environ,
                "SMARTAPP_OUTBOX_RETRY_SECONDS",
                15,
                minimum=1,
                means=" (seconds before a note the EHR could not take is tried again)",
            ),
            sandbox_mode=sandbox_issuer is not None,
            secret_key_from_env=bool(environ.get("SMARTAPP_SECRET_KEY")),
            migrate_on_start=_yes_no(
                environ, "SMARTAPP_MIGRATE_ON_START", default=sandbox_issuer is not None
            ),
            window_sessions=_yes_no(environ, "SMARTAPP_WINDOW_SESSIONS", default=True),
            prefetch_chart=_yes_no(environ, "SMARTAPP_PREFETCH_CHART", default=True),
        )


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


def _settings_repr(settings: Settings) -> str:
    shown = []
    for item in fields(settings):
        value = getattr(settings, item.name)
        if item.name in SECRET_FIELDS:
            text = "None" if value is None else ("()" if value == () else "'***'")
        elif item.name == "database_url":
            text = repr(_hide_password(value))
        elif item.name == "manifest":
            text = f"LaunchManifest(client_id={value.client_id!r})"
        else:
            text = repr(value)
        shown.append(f"{item.name}={text}")
    return f"Settings({', '.join(shown)})"


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


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

"""The SMART endpoints: `/launch` (EHR and standalone), `/callback`, the app's JWKS.

Views parse the request, call `flow`, and set cookies; errors render the HTML error
page (`LaunchError` and friends in `smartapp.errors`).
https://hl7.org/fhir/smart-app-launch/app-launch.html
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request

from smartapp import audit
from smartapp.config import ConfigError, Settings
from smartapp.db import get_db
from smartapp.identity import bound_identity
from smartapp.security import clear_cookie, set_cookie
from smartapp.smart import flow, logout
from smartapp.smart.keys import public_jwks
from smartapp.smart.services import EXTENSION_KEY, SMARTServices, get_services
from smartapp.smart.session import (
    ABSOLUTE_LIFETIME,
    SESSION_COOKIES,
    init_csrf,
    presented_secret,
    session_id_for,
)

bp = Blueprint("smart", __name__)

#: Short-lived cookie binding an authorize request to the browser that started it.
BINDING_COOKIE = "smartapp_auth"

#: Where each kind of launch lands after the callback.
LANDING = {"clinician": "/", "admin": "/admin"}


def init_app(app: Flask) -> None:
    settings: Settings = app.extensions["smartapp.settings"]
    with app.app_context():
        database = get_db()
    app.extensions[EXTENSION_KEY] = SMARTServices.build(settings, database)
    init_csrf(app)
    app.register_blueprint(bp)


def launch_scope(manifest_scope: str, *, ehr_launch: bool) -> str:
    """The manifest's scope for this kind of launch.

    EHR launch: `launch` (the EHR supplies the context). Standalone: `launch/patient`
    instead (the EHR asks the user to pick one), and `launch/encounter` only if the
    manifest lists it.
    """
    tokens = manifest_scope.split()
    if ehr_launch:
        if "launch" not in tokens:
            tokens.insert(0, "launch")
    else:
        tokens = [t for t in tokens if t != "launch"]
        if "launch/patient" not in tokens:
            tokens.insert(0, "launch/patient")
    return " ".join(dict.fromkeys(tokens))


def redirect_uri(settings: Settings) -> str:
    """The manifest's first redirect URI, resolved against the app's public base URL.

    Never against the request's Host header outside sandbox mode: whoever sets the Host
    would choose where the EHR sends the authorization code (`create_app` refuses to
    start without SMARTAPP_PUBLIC_URL; this holds even if it is bypassed).
    """
    target = settings.manifest.redirect_uris[0]
    if urlsplit(target).scheme:
        return target
    if settings.public_url:
        base = settings.public_url
    elif settings.sandbox_mode:
        base = request.url_root
    else:
        raise ConfigError("SMARTAPP_PUBLIC_URL is not set: the redirect URI cannot be built")
    return base.rstrip("/") + "/" + target.lstrip("/")


def start_authorization(*, iss: str, launch: str | None, purpose: str, scope: str) -> Response:
    """Redirect the browser to the EHR's authorize endpoint (after the allow-list check).

    The clinician launch calls this with the manifest's scope; the admin sign-in with
    `scope="openid fhirUser"`, `launch=None` and `purpose="admin"`. Raises the
    `LaunchError`s of `smartapp.errors` (rendered as the HTML error page).
    """
    services = get_services()
    start = flow.begin(
        services,
        iss=iss,
        launch=launch,
        purpose=purpose,
        scope=scope,
        redirect_uri=redirect_uri(services.settings),
        binding=request.cookies.get(BINDING_COOKIE),
    )
    response = _redirect(start.url)
    set_cookie(
        response, BINDING_COOKIE, start.binding, max_age=int(flow.PENDING_TTL.total_seconds())
    )
    return response


@bp.get("/launch")
def launch() -> Response:
    settings: Settings = current_app.extensions["smartapp.settings"]
    launch_id = request.args.get("launch")
    return start_authorization(
        iss=request.args.get("iss", ""),
        launch=launch_id,
        purpose="clinician",
        scope=launch_scope(settings.manifest.scope, ehr_launch=launch_id is not None),
    )


#: Sec-Fetch-Dest of a navigation inside a frame (what the EHR's sidebar is).
_FRAME_DESTINATIONS = frozenset({"iframe", "frame"})


def _cookieless_window(settings: Settings, binding: str | None) -> bool:
    """Is this callback from an EHR frame whose browser sent no cookie at all?

    The binding cookie set by /launch did not come back, in a frame: the browser blocks
    the app's cookies there (an embedded WebView2 that blocks third-party cookies), so a
    session cookie would not come back either. The frame-ancestors policy keeps the
    answer to the EHR's own pages.
    """
    return (
        settings.window_sessions
        and binding is None
        and request.headers.get("Sec-Fetch-Dest", "") in _FRAME_DESTINATIONS
    )


@bp.get("/callback")
def callback() -> Response | str:
    services = get_services()
    state = request.args.get("state")
    binding = request.cookies.get(BINDING_COOKIE)
    error = request.args.get("error")
    if error is not None:
        raise flow.fail_authorization(services, state=state, binding=binding, error=error)
    window = _cookieless_window(services.settings, binding)
    completed = flow.complete(
        services,
        state=state,
        code=request.args.get("code"),
        binding=binding,
        previous_sessions={
            purpose: request.cookies[name]
            for purpose, name in SESSION_COOKIES.items()
            if request.cookies.get(name)
        },
        carrier="window" if window else "cookie",
    )
    purpose = completed.launch.purpose
    launch = completed.launch
    audit.record(
        services.db,
        actor=bound_identity(launch.iss, launch.fhir_user),
        action=audit.Action.LAUNCH if purpose == "clinician" else audit.Action.ADMIN_SIGNIN,
        site=launch.iss,
        patient=launch.patient_id,
        detail={
            "scopes": str(launch.scopes),
            "encounter": launch.encounter_id,
            "carrier": completed.carrier,
        },
    )
    for hook in current_app.extensions.get(SESSION_STARTED_EXT, ()):
        hook(launch, completed.app_context)
    if completed.carrier == "window":
        # No cookie would come back, so no redirect: the sidebar is this answer, and its
        # script keeps the token in memory and sends it as a header (never in a URL).
        return render_template(
            "sidebar.html",
            launch=launch,
            csrf_token=launch.csrf_token,
            window_token=completed.cookie_value,
            landing=request.script_root + LANDING[purpose],
        )
    response = _redirect(request.script_root + LANDING[purpose])
    set_cookie(
        response,
        SESSION_COOKIES[purpose],
        completed.cookie_value,
        max_age=int(ABSOLUTE_LIFETIME.total_seconds()),
    )
    clear_cookie(response, BINDING_COOKIE)
    return response


#: Callables told (launch, appContext) of every launch session created (the CDS Hooks
#: service hands the launch the chart its card's hook read).
SESSION_STARTED_EXT = "smartapp.session_started"
#: Callables told the session id of every launch that logout ends (the chart cache drops it).
SESSION_ENDED_EXT = "smartapp.session_ended"


def _logout(purpose: str) -> Response:
    services = get_services()
    cookie = SESSION_COOKIES[purpose]
    secret, carrier = presented_secret(purpose)
    ended = (
        logout.end_launch(services, session_id_for(secret, carrier=carrier), purpose=purpose)
        if secret and len(secret) <= 200
        else None
    )
    if ended is not None:
        for hook in current_app.extensions.get(SESSION_ENDED_EXT, ()):
            hook(ended.session_id)
        audit.record(
            services.db,
            actor=ended.fhir_user,
            action="launch.logout" if purpose == "clinician" else "admin.signout",
            site=ended.iss,
            patient=ended.patient_id,
            detail={"revoked": ended.revoked},
        )
    response = jsonify({"status": "signed_out", "revoked": bool(ended and ended.revoked)})
    if carrier == "cookie":
        clear_cookie(response, cookie)
    return response


@bp.post("/logout")
def logout_clinician() -> Response:
    """End this window's launch (its X-Window-Token, else the session cookie; header
    X-CSRF-Token): server-side, and at the EHR if it can."""
    return _logout("clinician")


@bp.post("/admin/logout")
def logout_admin() -> Response:
    """End this browser's admin session (header X-CSRF-Token of that session)."""
    return _logout("admin")


@bp.get("/.well-known/jwks.json")
def jwks() -> Response:
    response = jsonify(public_jwks(get_services().signing_key))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


def _redirect(location: str) -> Response:
    # No body: Werkzeug's redirect page would repeat the URL, and this one carries `state`.
    return Response(status=302, headers={"Location": location}, content_type="text/plain")

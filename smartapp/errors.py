"""The application's error tree and the handlers that turn it into clear responses.

    AppError                       code (and perhaps a reason), message: what went wrong;
                                   the status is HTTP_STATUS's for its code, the words the
                                   clinician reads WORDING's (below), not the class's
    ├── LaunchError                (HTML page: "relaunch from the EHR")
    │   ├── InvalidLaunch          400 bad or missing launch parameters
    │   ├── UnknownIssuer          400 `iss` not on SMARTAPP_ALLOWED_ISSUERS
    │   ├── InvalidState           400 forged, reused or expired `state`
    │   └── AuthorizationFailed    502 the EHR's authorization server refused or failed
    ├── NotAuthenticated           401 no launch session (or it expired)
    ├── CSRFError                  403 missing or wrong X-CSRF-Token
    ├── Forbidden                  403 not allowed (scope not granted, not an admin)
    ├── NotFound                   404
    ├── BadRequest                 400 malformed JSON body or parameter
    ├── Conflict                   409 a concurrent change won (e.g. two tabs saving a note)
    └── UpstreamError              the EHR's FHIR server
        ├── TemporaryUpstreamError 503 could be retried (timeouts, 5xx, 429)
        └── FatalUpstreamError     502 retrying will not help (4xx, bad response)
            ├── ChartTooLarge      502 an answer over the size cap (SMARTAPP_FHIR_MAX_MB)
            └── RelaunchRequired   401 the token was refused and could not be refreshed

An error's `message` is its detail, written where it is raised (`smart/`, `fhir/`, …):
it is logged, never shown. What the person reading the answer is told is chosen here, by
code, in WORDING; only an error about the request itself (`about_the_request`: a bad
parameter, a conflicting change, raised by the web layer that parsed the request) shows its
own message, since it says what to send instead. Messages never carry a token, a secret or
patient data: they are logged.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)


class AppError(Exception):
    """An error the app expects: `code` names it (a protocol's code where one applies, as
    authlib's errors do) and `reason` the case within it, when the clinician is told
    something more specific (`InvalidState(reason="expired")`); `message` is the detail,
    for the log. Its HTTP status and its wording are chosen in the web layer (`http_status`,
    `public_message`), never by the module that raises it."""

    code = "internal_error"
    default_message = "unexpected error"
    #: The message says what was wrong with the request the reader sent, in the words of
    #: the web layer that parsed it (a parameter, a body, a change that conflicts): shown
    #: as it is. Every other error's message is detail for the log.
    about_the_request: ClassVar[bool] = False

    def __init__(
        self, message: str | None = None, *, code: str | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        #: Whether the raise site wrote a message (else the class's default).
        self.has_message = bool(message)
        self.reason = reason
        if code:
            self.code = code


class LaunchError(AppError):
    code = "invalid_launch"
    default_message = "the launch could not be completed"


class InvalidLaunch(LaunchError):
    """The launch request is missing a parameter or has a bad one."""

    code = "invalid_launch"


class UnknownIssuer(LaunchError):
    """The `iss` is not on the allow-list: nothing is sent to it."""

    code = "unknown_issuer"
    default_message = "the iss is not on SMARTAPP_ALLOWED_ISSUERS"


class InvalidState(LaunchError):
    """The `state` is unknown, reused, expired or bound to another browser."""

    code = "invalid_state"
    default_message = "the state is unknown or was already spent"


class AuthorizationFailed(LaunchError):
    code = "authorization_failed"
    default_message = "the EHR did not authorize the app"


class NotAuthenticated(AppError):
    code = "not_authenticated"
    default_message = "no launch session (none, unknown or expired)"


class CSRFError(AppError):
    code = "csrf_failed"
    default_message = "missing or wrong X-CSRF-Token"


class Forbidden(AppError):
    code = "forbidden"
    default_message = "not allowed"
    about_the_request = True


class NotFound(AppError):
    code = "not_found"
    default_message = "not found"
    about_the_request = True


class BadRequest(AppError):
    code = "bad_request"
    default_message = "the request was not understood"
    about_the_request = True


class StoreUnavailable(AppError):
    """The app's own store is locked, full or unreachable: a clear 503 within seconds."""

    code = "store_unavailable"
    default_message = "the store is locked, full or unreachable"


class Conflict(AppError):
    code = "conflict"
    default_message = "a concurrent change won"
    about_the_request = True


class UpstreamError(AppError):
    code = "ehr_error"
    default_message = "the EHR's FHIR server returned an error"


class TemporaryUpstreamError(UpstreamError):
    """Could be retried: a timeout, a refused connection, 429 or 5xx."""

    code = "ehr_unavailable"
    default_message = "the EHR's server is not answering (could be retried)"


class FatalUpstreamError(UpstreamError):
    """Retrying will not help: the server refused the request or answered nonsense."""

    code = "ehr_error"


class ChartTooLarge(FatalUpstreamError):
    """An answer from the EHR was larger than the cap: it was not read, and nothing was kept."""

    code = "chart_too_large"
    default_message = "an answer from the EHR was larger than SMARTAPP_FHIR_MAX_MB"


class RelaunchRequired(FatalUpstreamError):
    code = "relaunch_required"
    default_message = "the EHR refused the access token and it could not be refreshed"


#: The HTTP status of each error code: the one place an error becomes an HTTP answer (the
#: handlers below and the CDS Hooks views use it). Codes of the packages' own errors are
#: listed here too, so that `smart/`, `cdshooks/`, `governance/`, `admin/` and `jsonbody`
#: say what went wrong and the web layer says how that is answered.
HTTP_STATUS: Mapping[str, int] = {
    "internal_error": 500,
    # Launch (SMART App Launch, smartapp.smart).
    "invalid_launch": 400,
    "unknown_issuer": 400,
    "invalid_state": 400,
    "authorization_failed": 502,
    "access_denied": 403,  # RFC 6749 4.1.2.1: the user or the EHR declined
    "too_many_sign_ins": 503,  # could be retried
    "not_authenticated": 401,
    "relaunch_required": 401,
    # The request.
    "csrf_failed": 403,
    "forbidden": 403,
    "not_found": 404,
    "bad_request": 400,
    "body_too_large": 413,
    "invalid_token": 401,  # the admin API's bearer token (RFC 6750)
    "cds_client_refused": 401,  # CDS Hooks: the EHR's JWT
    "conflict": 409,
    "change_refused": 409,  # governance change control
    # The app's store, and the EHR.
    "store_unavailable": 503,
    "ehr_error": 502,
    "ehr_unavailable": 503,
    "chart_too_large": 502,
}


def http_status(exc: AppError) -> int:
    """The status of `exc`: its code's, else that of the nearest class whose code is listed
    (so `ChangeRefused(code="duplicate")` is a 409, as every refusal of change control)."""
    codes = (exc.code, *(c.__dict__["code"] for c in type(exc).__mro__ if "code" in c.__dict__))
    return next((HTTP_STATUS[code] for code in codes if code in HTTP_STATUS), 500)


@dataclass(frozen=True)
class Wording:
    """What the person reading an answer is told about an error."""

    text: str
    #: Said of a saved note that this error kept from the chart (it is kept in the app).
    note: str | None = None
    #: The next step is to open the app again from the chart: the HTML page says so, and
    #: gives the code to quote to the IT service desk.
    relaunch: bool = False


#: Said to a panel whose launch was replaced (the app opened again in this browser): never
#: "reload", which would show this chart's frame the newer launch, perhaps another patient.
_EARLIER_LAUNCH = (
    "This panel belongs to an earlier launch (the app was opened again in this browser, "
    "perhaps for another patient). Open the app again from this chart."
)
_TELL_IT = "Tell your IT service desk."

#: The words a clinician (or an admin) reads for each error, by code, and by
#: "code.reason" where a reason says something more specific: the one place they are
#: chosen. `smart/` and `fhir/` say what went wrong in their messages, which go to the log.
WORDING: Mapping[str, Wording] = {
    "internal_error": Wording("Something went wrong."),
    # Launch (SMART App Launch, smartapp.smart).
    "invalid_launch": Wording("This launch could not be completed.", relaunch=True),
    "invalid_launch.not_from_ehr": Wording(
        "This address is opened by the EHR. Open the app from the patient's chart in the EHR.",
        relaunch=True,
    ),
    "invalid_launch.bad_launch_parameter": Wording(
        "The EHR's launch parameter is missing or malformed.", relaunch=True
    ),
    "invalid_launch.no_code": Wording(
        "The EHR sent no authorization code. Open the app again.", relaunch=True
    ),
    "unknown_issuer": Wording(
        "This EHR is not registered with the app. Ask your IT service desk to add it.",
        relaunch=True,
    ),
    "invalid_state": Wording("This sign-in link has expired or was already used.", relaunch=True),
    "invalid_state.no_state": Wording(
        "This sign-in link is not valid. Open the app from the patient's chart in the EHR.",
        relaunch=True,
    ),
    "invalid_state.expired": Wording(
        "This sign-in took too long and has expired. Open the app again.", relaunch=True
    ),
    "invalid_state.other_browser": Wording(
        "This sign-in was started in another browser or window. Open the app again from the "
        "patient's chart in the EHR.",
        relaunch=True,
    ),
    "invalid_state.cookies_needed": Wording(
        "Signing in to the admin pages needs cookies: allow them for the app."
    ),
    "authorization_failed": Wording("The EHR did not authorize the app.", relaunch=True),
    # RFC 6749 4.1.2.1: the authorization server's `error` on the redirect.
    "authorization_failed.invalid_scope": Wording(
        f"The EHR does not allow the access the app asked for. {_TELL_IT}", relaunch=True
    ),
    "authorization_failed.unauthorized_client": Wording(
        f"The EHR does not allow this app to sign in this way. {_TELL_IT}", relaunch=True
    ),
    "authorization_failed.invalid_request": Wording(
        "The EHR refused the app's sign-in request.", relaunch=True
    ),
    "authorization_failed.server_error": Wording(
        "The EHR could not complete the sign-in.", relaunch=True
    ),
    "authorization_failed.temporarily_unavailable": Wording(
        "The EHR's sign-in is unavailable right now. Try again shortly.", relaunch=True
    ),
    "authorization_failed.bad_context": Wording(
        f"The EHR sent a launch the app cannot use. {_TELL_IT}", relaunch=True
    ),
    "no_patient_context": Wording(
        "The EHR did not say which patient this launch is for. Open the app from a "
        "patient's chart.",
        relaunch=True,
    ),
    "access_denied": Wording(
        "Access to the patient's record was not granted to the app.", relaunch=True
    ),
    "too_many_sign_ins": Wording(
        "Too many sign-ins are under way right now. Try again in a minute."
    ),
    "discovery_failed": Wording(
        f"The app could not read the EHR's sign-in settings. {_TELL_IT}", relaunch=True
    ),
    "invalid_id_token": Wording(
        f"The EHR's sign-in could not be verified. {_TELL_IT}", relaunch=True
    ),
    "invalid_id_token.clock": Wording(
        "The EHR's sign-in could not be verified: this computer's clock or the EHR's is "
        f"wrong. {_TELL_IT}",
        relaunch=True,
    ),
    "backend_services_failed": Wording(
        f"The EHR did not give the app its system access. {_TELL_IT}"
    ),
    "not_authenticated": Wording(
        "No active launch. Open the app again from the patient's chart in the EHR.",
        relaunch=True,
    ),
    "not_authenticated.earlier_launch": Wording(_EARLIER_LAUNCH),
    "not_authenticated.admin": Wording(
        "Send Authorization: Bearer <SMARTAPP_ADMIN_TOKEN>, or sign in at /admin."
    ),
    "relaunch_required": Wording(
        "Your session with the EHR has ended. Open the app again from the EHR.",
        note="Your session with the EHR ended before the note was sent. It is kept here and "
        "is sent the next time you open the app for this patient.",
        relaunch=True,
    ),
    # The request.
    "csrf_failed": Wording(
        "The request was missing its security token. Reload the app and try again."
    ),
    "csrf_failed.earlier_launch": Wording(_EARLIER_LAUNCH),
    "forbidden": Wording("You are not allowed to do this."),
    "not_found": Wording("Not found."),
    "unknown_service": Wording("No CDS service of that id here (see GET /cds-services)."),
    "bad_request": Wording("The request was not understood."),
    "body_too_large": Wording("The request body is larger than 1024 KB."),
    "invalid_request": Wording("Send Authorization: Bearer <SMARTAPP_ADMIN_TOKEN>."),
    "invalid_token": Wording("The bearer token is not the admin API token."),
    "cds_client_refused": Wording("The EHR's CDS Hooks token was refused."),
    "conflict": Wording("Someone else changed this at the same time; try again."),
    "change_refused": Wording("Change control refused this step."),
    # The app's store, and the EHR.
    "store_unavailable": Wording(
        "The app's store is busy or unavailable, so this was not recorded. Try again in a moment."
    ),
    "ehr_error": Wording(
        "The EHR's FHIR server returned an error.", note="The EHR refused the note."
    ),
    "ehr_unavailable": Wording(
        "The EHR is not answering right now. Try again in a moment.",
        note="The EHR is not answering; the app will try again.",
    ),
    "ehr_unavailable.deadline": Wording(
        "The EHR did not answer in time. Try again in a moment.",
        note="The EHR did not answer in time; the app will try again.",
    ),
    "ehr_unavailable.unreachable": Wording(
        "The EHR could not be reached. Try again in a moment.",
        note="The EHR could not be reached; the app will try again.",
    ),
    "ehr_forbidden": Wording(
        "The EHR refused: this app is not permitted to do this.",
        note="The EHR refused the note: this app is not permitted to write it.",
    ),
    "ehr_not_found": Wording(
        "The EHR could not find what the app asked for.",
        note="The EHR could not find the patient or the draft note.",
    ),
    "ehr_conflict": Wording(
        "The chart changed while the app was reading it; try again.",
        note="The EHR refused the note because the chart changed; save again.",
    ),
    "chart_too_large": Wording(
        "The chart is too large to read in one go. Ask your IT service desk to raise the "
        "app's limit."
    ),
    "bulk_export_failed": Wording(f"The EHR's bulk export failed. {_TELL_IT}"),
}


def _codes(exc: AppError) -> tuple[str, ...]:
    """The error's code, then its classes' codes, nearest first."""
    return (exc.code, *(c.__dict__["code"] for c in type(exc).__mro__ if "code" in c.__dict__))


def wording(exc: AppError) -> Wording:
    """WORDING's entry for `exc`: its "code.reason", else its code's, else that of the
    nearest class whose code is listed."""
    codes = _codes(exc)
    reason = getattr(exc, "reason", None)
    keys = (*(f"{code}.{reason}" for code in codes if reason), *codes)
    return next((WORDING[key] for key in keys if key in WORDING), WORDING["internal_error"])


def public_message(exc: AppError) -> str:
    """What the reader of the answer is told: the table's words, or, for an error about
    the request itself, the message its raise site wrote."""
    if exc.about_the_request and getattr(exc, "has_message", False):
        return exc.message
    return wording(exc).text


def note_message(code: str | None) -> str | None:
    """What the clinician is told of a saved note whose last delivery failed with `code`
    (the note is kept in the app); None when it did not fail."""
    if not code:
        return None
    found = WORDING.get(code)
    if found is None:
        return WORDING["ehr_error"].note
    return found.note or found.text


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def init_app(app: Flask) -> None:
    """Error handlers: JSON on `/api/*`, an HTML page elsewhere; never a stack trace."""
    # Flask is imported here so that `fhir/` and `suggestions/` can raise these errors
    # without depending on the web framework.
    from flask import Response, jsonify, render_template, request
    from werkzeug.exceptions import HTTPException

    def _wants_json() -> bool:
        return request.path.startswith(("/api/", "/admin/api/")) or request.path == "/healthz"

    def _page(title: str, *, code: str, message: str, relaunch: bool = False) -> str:
        return render_template(
            "error.html", title=title, code=code, message=message, relaunch=relaunch
        )

    @app.errorhandler(AppError)
    def handle_app_error(exc: AppError) -> tuple[Response | str, int]:
        # The detail (which check failed, which request) is for the log; the reader gets
        # the table's words for the code.
        reason = getattr(exc, "reason", None)
        log.info(
            "request failed: %s %s -> %s%s (%s)",
            request.method,
            request.path,
            exc.code,
            f".{reason}" if reason else "",
            exc.message,
        )
        if _wants_json():
            return jsonify(error_body(exc.code, public_message(exc))), http_status(exc)
        said = wording(exc)
        page = _page(
            "The app could not open",
            code=exc.code,
            message=public_message(exc),
            relaunch=said.relaunch,
        )
        return page, http_status(exc)

    @app.errorhandler(HTTPException)
    def handle_http_error(exc: HTTPException) -> tuple[Response | str, int]:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name or "Error"
        if _wants_json():
            return jsonify(error_body(code, message)), status
        return _page(exc.name or "Error", code=code, message=message), status

    from sqlalchemy.exc import OperationalError

    @app.errorhandler(OperationalError)
    def handle_store_error(exc: OperationalError) -> tuple[Response | str, int]:
        # A locked SQLite file, a full disk, PostgreSQL down: the store's own trouble, said
        # as such (the exception's type only: its message may quote the statement's data).
        log.error(
            "store unavailable on %s %s: %s", request.method, request.path, type(exc.orig).__name__
        )
        return handle_app_error(StoreUnavailable())

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> tuple[Response | str, int]:
        # The browser gets a plain message. The log gets the frames and the exception's
        # type but not its message, which may quote chart data (pydantic errors do).
        log.error(
            "unhandled %s on %s %s\n%s",
            type(exc).__name__,
            request.method,
            request.path,
            "".join(traceback.format_tb(exc.__traceback__)),
        )
        said = WORDING["internal_error"].text
        if _wants_json():
            return jsonify(error_body("internal_error", said)), 500
        return _page("Something went wrong", code="internal_error", message=said), 500

"""The application's error tree and the handlers that turn it into clear responses.

    AppError                       code, message safe to show a clinician; the status
                                   is HTTP_STATUS's for its code (below), not the class's
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

Messages never carry a token, a secret or patient data: they are shown and logged.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)


class AppError(Exception):
    """An error the app expects: `code` names it (a protocol's code where one applies, as
    authlib's errors do), `message` is safe to show a clinician; its HTTP status is chosen
    by `http_status`, in the web layer, never by the module that raises it."""

    code = "internal_error"
    default_message = "Something went wrong."

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        if code:
            self.code = code


class LaunchError(AppError):
    code = "invalid_launch"
    default_message = "This launch could not be completed."


class InvalidLaunch(LaunchError):
    """The launch request is missing a parameter or has a bad one."""

    code = "invalid_launch"


class UnknownIssuer(LaunchError):
    """The `iss` is not on the allow-list: nothing is sent to it."""

    code = "unknown_issuer"
    default_message = "This EHR is not registered with the app."


class InvalidState(LaunchError):
    """The `state` is unknown, reused, expired or bound to another browser."""

    code = "invalid_state"
    default_message = "This sign-in link has expired or was already used."


class AuthorizationFailed(LaunchError):
    code = "authorization_failed"
    default_message = "The EHR did not authorize the app."


class NotAuthenticated(AppError):
    code = "not_authenticated"
    default_message = "No active launch. Open the app again from the patient's chart in the EHR."


#: Said to a panel whose launch was replaced (the app opened again in this browser): never
#: "reload", which would show this chart's frame the newer launch, perhaps another patient.
EARLIER_LAUNCH = (
    "This panel belongs to an earlier launch (the app was opened again in this browser, "
    "perhaps for another patient). Open the app again from this chart."
)


class CSRFError(AppError):
    code = "csrf_failed"
    default_message = "The request was missing its security token. Reload the app and try again."


class Forbidden(AppError):
    code = "forbidden"
    default_message = "You are not allowed to do this."


class NotFound(AppError):
    code = "not_found"
    default_message = "Not found."


class BadRequest(AppError):
    code = "bad_request"
    default_message = "The request was not understood."


class StoreUnavailable(AppError):
    """The app's own store is locked, full or unreachable: a clear 503 within seconds."""

    code = "store_unavailable"
    default_message = (
        "The app's store is busy or unavailable, so this was not recorded. Try again in a moment."
    )


class Conflict(AppError):
    code = "conflict"
    default_message = "Someone else changed this at the same time; try again."


class UpstreamError(AppError):
    code = "ehr_error"
    default_message = "The EHR's FHIR server returned an error."


class TemporaryUpstreamError(UpstreamError):
    """Could be retried: a timeout, a refused connection, 429 or 5xx."""

    code = "ehr_unavailable"
    default_message = "The EHR is not answering right now. Try again in a moment."


class FatalUpstreamError(UpstreamError):
    """Retrying will not help: the server refused the request or answered nonsense."""

    code = "ehr_error"


class ChartTooLarge(FatalUpstreamError):
    """An answer from the EHR was larger than the cap: it was not read, and nothing was kept."""

    code = "chart_too_large"
    default_message = "The chart is too large to read in one go."


class RelaunchRequired(FatalUpstreamError):
    code = "relaunch_required"
    default_message = "Your session with the EHR has ended. Open the app again from the EHR."


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

    @app.errorhandler(AppError)
    def handle_app_error(exc: AppError) -> tuple[Response | str, int]:
        log.info("request failed: %s %s -> %s", request.method, request.path, exc.code)
        if _wants_json():
            return jsonify(error_body(exc.code, exc.message)), http_status(exc)
        return (
            render_template("error.html", title="The app could not open", error=exc),
            http_status(exc),
        )

    @app.errorhandler(HTTPException)
    def handle_http_error(exc: HTTPException) -> tuple[Response | str, int]:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name or "Error"
        if _wants_json():
            return jsonify(error_body(code, message)), status
        return render_template("error.html", title=exc.name, error=AppError(message)), status

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
        err = AppError()
        if _wants_json():
            return jsonify(error_body(err.code, err.message)), 500
        return render_template("error.html", title="Something went wrong", error=err), 500

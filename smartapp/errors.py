"""The application's error tree and the handlers that turn it into clear responses.

    AppError                       status, code, message safe to show a clinician
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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)


class AppError(Exception):
    status_code = 500
    code = "internal_error"
    default_message = "Something went wrong."

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        if code:
            self.code = code


class LaunchError(AppError):
    status_code = 400
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
    status_code = 502
    code = "authorization_failed"
    default_message = "The EHR did not authorize the app."


class NotAuthenticated(AppError):
    status_code = 401
    code = "not_authenticated"
    default_message = "No active launch. Open the app again from the patient's chart in the EHR."


#: Said to a panel whose launch was replaced (the app opened again in this browser): never
#: "reload", which would show this chart's frame the newer launch, perhaps another patient.
EARLIER_LAUNCH = (
    "This panel belongs to an earlier launch (the app was opened again in this browser, "
    "perhaps for another patient). Open the app again from this chart."
)


class CSRFError(AppError):
    status_code = 403
    code = "csrf_failed"
    default_message = "The request was missing its security token. Reload the app and try again."


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"
    default_message = "You are not allowed to do this."


class NotFound(AppError):
    status_code = 404
    code = "not_found"
    default_message = "Not found."


class BadRequest(AppError):
    status_code = 400
    code = "bad_request"
    default_message = "The request was not understood."


class StoreUnavailable(AppError):
    """The app's own store is locked, full or unreachable: a clear 503 within seconds."""

    status_code = 503
    code = "store_unavailable"
    default_message = (
        "The app's store is busy or unavailable, so this was not recorded. Try again in a moment."
    )


class Conflict(AppError):
    status_code = 409
    code = "conflict"
    default_message = "Someone else changed this at the same time; try again."


class UpstreamError(AppError):
    status_code = 502
    code = "ehr_error"
    default_message = "The EHR's FHIR server returned an error."


class TemporaryUpstreamError(UpstreamError):
    """Could be retried: a timeout, a refused connection, 429 or 5xx."""

    status_code = 503
    code = "ehr_unavailable"
    default_message = "The EHR is not answering right now. Try again in a moment."


class FatalUpstreamError(UpstreamError):
    """Retrying will not help: the server refused the request or answered nonsense."""

    status_code = 502
    code = "ehr_error"


class ChartTooLarge(FatalUpstreamError):
    """An answer from the EHR was larger than the cap: it was not read, and nothing was kept."""

    code = "chart_too_large"
    default_message = "The chart is too large to read in one go."


class RelaunchRequired(FatalUpstreamError):
    status_code = 401
    code = "relaunch_required"
    default_message = "Your session with the EHR has ended. Open the app again from the EHR."


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
            return jsonify(error_body(exc.code, exc.message)), exc.status_code
        return (
            render_template("error.html", title="The app could not open", error=exc),
            exc.status_code,
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

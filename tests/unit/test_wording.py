"""Unit: what a clinician reads about an error is chosen in one place (`smartapp.errors.WORDING`).

Every code an error can carry has wording; the messages written in `smart/` and `fhir/`
are detail for the log, never shown; only errors about the request itself (raised by the
web layer that parsed it) show their own message.
"""

from __future__ import annotations

import ast
import importlib
import logging
import pathlib

import pytest

import smartapp
from smartapp import create_app
from smartapp.errors import HTTP_STATUS, WORDING, AppError, note_message, public_message, wording
from tests.conftest import close_app, make_settings
from tests.unit.test_errors import ERRORS

PACKAGE = pathlib.Path(smartapp.__file__).parent
BY_NAME = {cls.__name__: cls for cls in ERRORS}
SECRET = "the detail of a zebra quokka check that failed"


def _calls(folder: pathlib.Path):
    """(module path, error class, code=…, reason=…) of every call of an AppError class."""
    for path in sorted(folder.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in BY_NAME:
                continue
            given = {
                k.arg: k.value.value
                for k in node.keywords
                if isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)
            }
            yield path, BY_NAME[name], given.get("code"), given.get("reason")


CALLS = list(_calls(PACKAGE))


def _instance(cls: type[AppError], *, code: str | None = None, reason: str | None = None):
    exc = cls.__new__(cls)  # some constructors take required arguments
    exc.code = code or cls.code
    exc.reason = reason
    exc.message = SECRET
    exc.has_message = True
    return exc


def test_the_scan_finds_the_raise_sites():
    found = {(cls.__name__, code, reason) for _, cls, code, reason in CALLS}
    assert ("AuthorizationFailed", "no_patient_context", None) in found
    assert ("InvalidState", None, "expired") in found
    assert ("TemporaryUpstreamError", None, "deadline") in found


def test_every_code_has_wording():
    codes = set(HTTP_STATUS) | {cls.__dict__["code"] for cls in ERRORS if "code" in cls.__dict__}
    codes |= {code for _, cls, code, _ in CALLS if code and not cls.about_the_request}
    from smartapp.fhir.client import FHIRRequestRefused

    codes |= {FHIRRequestRefused("x", status=s).code for s in (400, 403, 404, 409, 410, 412)}
    assert sorted(codes - set(WORDING)) == []


def test_every_reason_given_has_its_own_wording():
    from smartapp.smart.flow import _AUTHORIZE_ERRORS

    cases = {(cls, code, reason) for _, cls, code, reason in CALLS if reason}
    cases |= {(BY_NAME["AuthorizationFailed"], None, error) for error in _AUTHORIZE_ERRORS}
    for cls, code, reason in cases:
        exc = _instance(cls, code=code, reason=reason)
        bare = _instance(cls, code=code)
        assert wording(exc) != wording(bare), f"{cls.__name__} reason={reason}: no wording"


def test_every_wording_belongs_to_a_code():
    codes = set(HTTP_STATUS) | {cls.__dict__["code"] for cls in ERRORS if "code" in cls.__dict__}
    codes |= {code for _, _, code, _ in CALLS if code}
    codes |= {"ehr_forbidden", "ehr_not_found", "ehr_conflict"}
    assert sorted({key.split(".")[0] for key in WORDING} - codes) == []


def test_smart_and_fhir_raise_no_error_that_shows_its_own_message():
    for folder in ("smart", "fhir"):
        for path, cls, _, _ in _calls(PACKAGE / folder):
            assert not cls.about_the_request, f"{path.name}: {cls.__name__} would show its text"
    for cls in ERRORS:
        if cls.__module__.startswith(("smartapp.smart.", "smartapp.fhir.")):
            assert not cls.about_the_request, cls.__name__


@pytest.fixture
def raising_app(tmp_path):
    """The app, with two routes raising the error named: one JSON (/api/), one HTML."""
    app = create_app(make_settings(tmp_path))
    app.config["TESTING"] = True
    state: dict[str, AppError] = {}

    def raise_it(**_):
        raise state["error"]

    app.add_url_rule("/api/test-raise", "test_raise_json", raise_it)
    app.add_url_rule("/test-raise", "test_raise_html", raise_it)
    yield app, state
    close_app(app)


# Every error class that smart/ or fhir/ raise, or that they define.
PROTOCOL_ERRORS = sorted(
    {
        (cls, code, reason)
        for path, cls, code, reason in CALLS
        if {"smart", "fhir"} & set(path.relative_to(PACKAGE).parts[:1])
    }
    | {
        (c, None, None)
        for c in ERRORS
        if c.__module__.startswith(("smartapp.smart.", "smartapp.fhir."))
    },  # noqa: E501
    key=lambda t: (t[0].__name__, t[1] or "", t[2] or ""),
)


@pytest.mark.parametrize(
    ("cls", "code", "reason"),
    PROTOCOL_ERRORS,
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v),
)
def test_smart_and_fhir_messages_reach_the_log_not_the_clinician(
    raising_app, caplog, cls, code, reason
):
    app, state = raising_app
    state["error"] = _instance(cls, code=code, reason=reason)
    client = app.test_client()
    with caplog.at_level(logging.INFO, logger="smartapp.errors"):
        answer = client.get("/api/test-raise")
        page = client.get("/test-raise")
    said = wording(state["error"]).text
    error = answer.get_json()["error"]
    assert error == {"code": state["error"].code, "message": said}
    html = page.get_data(as_text=True)
    assert SECRET not in html and said.replace("'", "&#39;") in html
    assert SECRET in caplog.text  # the detail is kept, for IT


def test_the_html_page_says_relaunch_where_the_table_does(raising_app):
    from smartapp.errors import InvalidState, StoreUnavailable

    app, state = raising_app
    client = app.test_client()
    state["error"] = InvalidState("spent", reason="expired")
    expired = client.get("/test-raise").get_data(as_text=True)
    assert "took too long" in expired and "open the app again from the patient" in expired
    assert "<code>invalid_state</code>" in expired
    state["error"] = StoreUnavailable()
    busy = client.get("/test-raise").get_data(as_text=True)
    assert "not recorded" in busy and "<code>" not in busy


def test_an_error_about_the_request_shows_what_the_web_layer_wrote(raising_app):
    from smartapp.errors import BadRequest, Conflict

    app, state = raising_app
    client = app.test_client()
    state["error"] = BadRequest("kind: one of problem_summary, care_gaps")
    assert client.get("/api/test-raise").get_json()["error"]["message"].startswith("kind: one of")
    state["error"] = Conflict()  # no message of its own: the table's
    assert client.get("/api/test-raise").get_json()["error"]["message"] == WORDING["conflict"].text


def test_an_unexpected_exception_says_the_internal_error_wording(raising_app):
    app, state = raising_app
    state["error"] = RuntimeError(SECRET)  # type: ignore[assignment]
    answer = app.test_client().get("/api/test-raise")
    assert answer.status_code == 500
    assert answer.get_json()["error"]["message"] == WORDING["internal_error"].text


def test_a_note_kept_from_the_chart_is_worded_from_the_table():
    assert "kept here" in note_message("relaunch_required")
    assert note_message("ehr_forbidden") == WORDING["ehr_forbidden"].note
    assert note_message("something_new") == WORDING["ehr_error"].note
    assert note_message(None) is None


def test_public_message_of_a_fhir_timeout_says_did_not_answer_in_time():
    client_module = importlib.import_module("smartapp.fhir.client")
    exc = client_module.TemporaryUpstreamError("GET Observation: 30 s", reason="deadline")
    assert "did not answer in time" in public_message(exc)
    assert "Observation" not in public_message(exc)

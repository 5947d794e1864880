"""Unit: an error's HTTP status is chosen in one place (`smartapp.errors.HTTP_STATUS`).

The packages say what went wrong (a code, a message for the clinician); the web layer says
how that is answered. Every error class in the app must resolve to a listed status.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import smartapp
from smartapp.errors import HTTP_STATUS, AppError, http_status


def _all_errors() -> list[type[AppError]]:
    for module in pkgutil.walk_packages(smartapp.__path__, "smartapp."):
        if ".migrations" not in module.name:
            importlib.import_module(module.name)
    found: list[type[AppError]] = []
    pending = [AppError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return [c for c in found if c.__module__.startswith("smartapp.")]


ERRORS = _all_errors()


def _bare(cls: type[AppError]) -> AppError:
    """An instance with its class's code (some constructors take required arguments)."""
    return cls.__new__(cls)


def test_every_error_class_is_found():
    names = {c.__name__ for c in ERRORS}
    # The packages' own errors, which used to carry their status themselves.
    assert {"AccessDenied", "TooManyPending", "CDSClientRefused", "ChangeRefused"} <= names
    assert {"InvalidToken", "BodyTooLarge"} <= names


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_no_error_class_chooses_its_own_status(cls):
    assert "status_code" not in cls.__dict__, "add the code to smartapp.errors.HTTP_STATUS"
    chain = [c.__dict__["code"] for c in cls.__mro__ if "code" in c.__dict__]
    listed = [code for code in chain if code in HTTP_STATUS]
    assert listed, f"{cls.__name__}: none of {chain} is in HTTP_STATUS"
    if cls is not AppError:
        # An expected error is never answered as the unexpected one.
        assert listed[0] != "internal_error" and http_status(_bare(cls)) != 500


@pytest.mark.parametrize(
    ("module", "name", "status"),
    [
        ("smartapp.smart.flow", "AccessDenied", 403),  # not its parent's 502
        ("smartapp.smart.flow", "TooManyPending", 503),  # not LaunchError's 400
        ("smartapp.cdshooks.trust", "CDSClientRefused", 401),
        ("smartapp.governance.registry", "ChangeRefused", 409),
        ("smartapp.admin.auth", "InvalidToken", 401),
        ("smartapp.jsonbody", "BodyTooLarge", 413),
        ("smartapp.errors", "RelaunchRequired", 401),  # not FatalUpstreamError's 502
        ("smartapp.errors", "TemporaryUpstreamError", 503),
    ],
)
def test_statuses_of_the_packages_errors(module, name, status):
    assert http_status(_bare(getattr(importlib.import_module(module), name))) == status


def test_a_code_given_at_the_raise_site_keeps_its_class_status():
    from smartapp.errors import BadRequest, Conflict
    from smartapp.governance.registry import ChangeRefused

    assert http_status(ChangeRefused("Propose it once.", code="duplicate")) == 409
    assert http_status(Conflict("Evaluate it first.", code="evaluation_unknown")) == 409
    assert http_status(BadRequest("No.", code="report_not_accepted")) == 400

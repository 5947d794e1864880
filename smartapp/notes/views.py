"""The clinician sidebar: the page and its JSON API (`/api/*`, see CONTRACT.md)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request

from smartapp.config import Settings, origin_of
from smartapp.db import get_db
from smartapp.errors import AppError, BadRequest, NotFound, note_message
from smartapp.feedback.models import ShownSuggestion
from smartapp.fhir.readers import patient_name
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.jsonbody import json_body
from smartapp.kinds import KIND_LABELS, KINDS
from smartapp.note_layout import AfterVisitSummary, NoteLayout
from smartapp.notes.composer import ComposedNote
from smartapp.notes.incomplete import chart_incomplete
from smartapp.notes.presenting import summary_for
from smartapp.notes.service import SaveResult, SidebarService
from smartapp.notes.style import EMPTY_CSS, SMARTStyleSheets
from smartapp.smart.session import LaunchContext, current_launch

bp = Blueprint("sidebar", __name__)

_View = TypeVar("_View", bound=Callable[..., Any])


def one_store_session(view: _View) -> _View:
    """The request's store work on one session and connection (`Database.unit`): the
    sidebar's frequent requests are otherwise mostly session and round-trip overhead."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with get_db().unit():
            return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def _service() -> SidebarService:
    service: SidebarService = current_app.extensions["smartapp.sidebar"]
    return service


#: A decision takes a few clicks or keys; more than this is not a count but a bad value.
MAX_ACTIONS = 10_000


def _json_body() -> dict[str, Any]:
    return json_body()


#: Shown on a stand-in whose LLM draft never arrived (its process stopped on the way).
NOT_ARRIVED = "The AI draft did not arrive; showing rule-based suggestions"


def suggestion_json(
    row: ShownSuggestion,
    snapshot: ChartSnapshot | None = None,
    pending: tuple[str, ...] = (),
) -> dict[str, Any]:
    decision = row.latest_decision()
    engine = dict(row.engine_extra or {})
    engine.update({"name": row.engine_name, "version": row.engine_version})
    if engine.get("interim") and row.kind not in pending:
        del engine["interim"]
        engine["fallbackReason"] = NOT_ARRIVED
    return {
        "id": row.id,
        "kind": row.kind,
        "title": row.title,
        "text": row.text,
        "citations": row.citations,
        "engine": engine,
        "statements": row.statements,
        "verification": row.verification,
        "chartIncomplete": chart_incomplete(
            snapshot, row.kind, (c.get("reference", "") for c in row.citations or [])
        )
        if snapshot is not None
        else [],
        "decision": None
        if decision is None
        else {
            "action": decision.action,
            "text": decision.final_text,
            "reason": decision.reason,
            "decidedAt": decision.decided_at.isoformat(),
        },
    }


@bp.get("/")
def sidebar() -> str:
    launch = current_launch()
    return render_template("sidebar.html", launch=launch, csrf_token=launch.csrf_token)


@bp.get("/api/context")
@one_store_session
def context() -> Response:
    """The launch's context; `chart` is null until the chart has been read (ahead, or by
    /api/suggestions)."""
    launch = current_launch()
    patient, snapshot = _service().context(launch)
    return jsonify(
        {
            "patient": {
                "id": launch.patient_id,
                "name": patient_name(patient),
                "birthDate": patient.get("birthDate"),
                "gender": patient.get("gender"),
            },
            "encounter": {"id": launch.encounter_id} if launch.encounter_id else None,
            "fhirUser": launch.fhir_user,
            "needPatientBanner": launch.need_patient_banner,
            "csrfToken": launch.csrf_token,
            "canWriteNotes": launch.scopes.allows("DocumentReference", "c"),
            "chart": None
            if snapshot is None
            else {
                "fetchedAt": snapshot.fetched_at.isoformat() if snapshot.fetched_at else None,
                "problems": [p.to_json() for p in snapshot.problems],
                "notGranted": list(snapshot.not_granted),
            },
        }
    )


def _suggestions_response(launch: LaunchContext, *, refresh: bool) -> Response:
    view = _service().suggestions(launch, refresh=refresh)
    return jsonify(
        {
            "suggestions": [suggestion_json(r, view.snapshot, view.pending) for r in view.rows],
            "notEnabled": [n.to_json() for n in view.not_enabled],
            "pending": _pending_json(view.pending),
            "changes": view.changes.to_json(),
            "chart": {
                "fetchedAt": view.snapshot.fetched_at.isoformat()
                if view.snapshot.fetched_at
                else None,
                "problems": [p.to_json() for p in view.snapshot.problems],
                "notGranted": list(view.snapshot.not_granted),
            },
        }
    )


def _pending_json(kinds: tuple[str, ...]) -> list[dict[str, str]]:
    return [{"kind": k, "title": KIND_LABELS.get(k, k)} for k in kinds]


@bp.get("/api/suggestions")
@one_store_session
def suggestions() -> Response:
    return _suggestions_response(current_launch(), refresh=False)


@bp.get("/api/suggestions/pending")
@one_store_session
def pending() -> Response:
    """The kinds whose LLM draft is still on its way: what the sidebar polls while it waits."""
    return jsonify({"pending": _pending_json(_service().pending(current_launch()))})


@bp.post("/api/refresh")
@one_store_session
def refresh() -> Response:
    """Re-read the chart from the EHR (the sidebar's refresh action) and redraft."""
    return _suggestions_response(current_launch(), refresh=True)


@bp.post("/api/suggestions/<suggestion_id>/feedback")
def feedback(suggestion_id: str) -> Response:
    launch = current_launch()
    body = _json_body()
    action_count = body.get("actions", 1)
    if not isinstance(action_count, int) or isinstance(action_count, bool):
        action_count = 1
    if not 0 <= action_count <= MAX_ACTIONS:
        raise BadRequest(f"actions must be a whole number from 0 to {MAX_ACTIONS}.")
    _service().decide(
        launch,
        suggestion_id,
        action=str(body.get("action", "")),
        text=body.get("text"),
        reason=body.get("reason"),
        comment=body.get("comment"),
        action_count=action_count,
    )
    return jsonify({"status": "recorded"})


def note_json(composed: ComposedNote, layout: NoteLayout) -> dict[str, Any]:
    """The note exactly as `POST /api/note` would write it (the sidebar's preview)."""
    return {
        "text": composed.text,
        "sections": [s.to_json() for s in composed.sections],
        "type": layout.type.coding(),
        "aiAssisted": composed.note.ai_assisted,
        "engines": [{"name": n, "version": v} for n, v in composed.note.engines],
        "suggestions": list(composed.note.used),
        "omitted": [o.to_json() for o in composed.omitted],
    }


def summary_json(composed: ComposedNote, config: AfterVisitSummary) -> dict[str, Any]:
    """The after-visit summary as it would be written, with its reading grade."""
    return {
        "offered": config.offer and bool(composed.patient.text),
        "text": composed.patient.text,
        "type": config.type.coding(),
        "title": config.title,
        "aiAssisted": composed.patient.ai_assisted,
        "readingGrade": composed.patient_grade,
        "targetGrade": config.reading_grade,
    }


@bp.get("/api/note/preview")
def note_preview() -> Response:
    launch = current_launch()
    service = _service()
    composed = service.compose_note(launch)
    return jsonify(
        {
            **note_json(composed, service.note_layout(launch.iss)),
            "afterVisitSummary": summary_json(composed, service.summary_config(launch.iss)),
        }
    )


@bp.post("/api/note")
def save_note() -> tuple[Response, int]:
    launch = current_launch()
    body = json_body(required=False)
    wants_summary = body.get("afterVisitSummary", False)
    if not isinstance(wants_summary, bool):
        raise BadRequest("afterVisitSummary must be true or false.")
    result = _service().save_note(
        launch,
        text=body.get("text"),
        after_visit_summary=wants_summary,
        seconds_in_sidebar=_seconds_in_sidebar(body.get("secondsInSidebar")),
    )
    pulse = _service().pulse_for(launch, result.note.id)
    answer: dict[str, Any] = {
        **_written_json(result),
        "pulse": pulse.to_json() if pulse else None,
    }
    if wants_summary:
        answer["afterVisitSummary"] = (
            _written_json(result.summary)
            if result.summary is not None
            else {"status": "failed", "error": note_message(result.summary_error)}
        )
    # 202: kept here and retried; the clinician sees "saved here, will retry".
    return jsonify(answer), 201 if result.written is not None else 202


#: A day: a page left open longer than that is not a measurement of one note.
MAX_SECONDS_IN_SIDEBAR = 86_400.0


def _seconds_in_sidebar(value: Any) -> float | None:
    """`secondsInSidebar`: seconds the page was visible since its last save (optional)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest("secondsInSidebar must be a number of seconds.")
    if not 0 <= value <= MAX_SECONDS_IN_SIDEBAR:
        raise BadRequest(f"secondsInSidebar must be between 0 and {MAX_SECONDS_IN_SIDEBAR:.0f}.")
    return float(value)


def _written_json(result: SaveResult) -> dict[str, Any]:
    if result.written is None:
        return {"status": "pending", "note": result.note.to_json()}
    return {
        "documentReference": result.written.document_reference,
        "provenance": result.written.provenance,
        "status": "in_chart",
        "note": result.note.to_json(),
    }


@bp.post("/api/pulse")
def pulse() -> Response:
    """The clinician's answer to the pulse after a saved note (or that they skipped it)."""
    _service().answer_pulse(current_launch(), _json_body())
    return jsonify({"status": "recorded"})


@bp.get("/api/notes")
def notes() -> Response:
    """This visit's note (and notes an earlier launch left waiting), and the visit's draft."""
    launch = current_launch()
    return jsonify({"notes": _service().notes(launch), "visit": _service().visit_state(launch)})


@bp.get("/api/about")
def about() -> Response:
    """About this suggestion: the drafting engine version's source attributes (HTI-1)."""
    kind = request.args.get("kind", "")
    if kind not in KINDS:
        raise BadRequest(f"kind: one of {', '.join(KINDS)}.")
    return jsonify(_service().about(current_launch(), kind))


@bp.get("/api/resources/<resource_type>/<resource_id>")
def resource(resource_type: str, resource_id: str) -> Response:
    """A cited resource, summarized from this launch's cached chart: never fetched anew.

    Anything the snapshot does not hold is 404, so the sidebar cannot be used to read
    more of the chart than the launch already read.
    """
    launch = current_launch()
    summary = summary_for(_service().chart(launch), resource_type, resource_id)
    if summary is None:
        raise NotFound("That resource is not in the chart this app read for this launch.")
    return jsonify({"resource": summary})


@bp.get("/style.css")
def style_sheet() -> Response:
    """The EHR's SMART style as CSS custom properties (empty without a launch or a style)."""
    try:
        url = current_launch().smart_style_url
    except AppError:
        # A stylesheet cannot show an error; the page itself says what is wrong.
        url = None
    sheets: SMARTStyleSheets = current_app.extensions["smartapp.style_sheets"]
    css = sheets.css_for(url) if url else EMPTY_CSS
    response = Response(css, mimetype="text/css")
    # Per launch (the cookie picks the style): never shared by a cache.
    response.headers["Cache-Control"] = "private, no-store"
    return response


def init_app(app: Flask, service: SidebarService) -> None:
    settings: Settings = app.extensions["smartapp.settings"]
    app.extensions["smartapp.sidebar"] = service
    app.extensions["smartapp.style_sheets"] = SMARTStyleSheets(
        trusted_origins=(*settings.frame_ancestors, *map(origin_of, settings.allowed_issuers))
    )
    app.register_blueprint(bp)

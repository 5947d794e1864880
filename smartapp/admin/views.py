"""The admin area: the dashboard pages (`/admin`, HTML) and the JSON API (`/admin/api/*`).

Views parse input, call one service function, audit, and render; the rules live in
metrics.py, rollout.py, registry.py and smartapp.audit. Contract: CONTRACT.md, Governance.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    jsonify,
    render_template,
    request,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from smartapp.admin import charts
from smartapp.admin.auth import (
    SIGNIN_EXT,
    AdminUser,
    SignedInUser,
    SignInStarter,
    admin_from,
    api_caller,
    signed_in_user,
)
from smartapp.admin.baseline import baseline_summary
from smartapp.admin.control import rollout_control
from smartapp.admin.flagged import detail_json, flagged_suggestion, flagged_suggestions
from smartapp.admin.metrics import (
    FIELDS,
    GROUP_BYS,
    aware,
    compare_periods,
    compute_metrics,
    notes_written,
    pulse_summary,
    site_variance,
)
from smartapp.admin.params import (
    body_bool,
    body_list,
    body_number,
    body_str,
    body_when,
    parse_choice,
    parse_int,
    parse_range,
    parse_when,
)
from smartapp.admin.review import ReviewStep, apply_step, review_json, reviews_for
from smartapp.admin.safety import safety_summary
from smartapp.audit import Action, AuditQuery, record, search
from smartapp.audit.export import cell, to_csv, to_fhir_bundle
from smartapp.config import Settings, normalize_issuer
from smartapp.db import get_db, utcnow
from smartapp.errors import AppError, BadRequest, Forbidden
from smartapp.governance import rollout
from smartapp.governance.model_cards import as_fhir as cards_as_fhir
from smartapp.governance.model_cards import model_cards
from smartapp.governance.models import ANY, KILL_SCOPES, REVIEW_STATES, FlagReview
from smartapp.governance.registry import (
    ChangeControl,
    ChangeRefused,
    active_engine,
    is_killed,
    kill_switches,
    list_versions,
)
from smartapp.governance.state import load_state
from smartapp.identity import bound_identity
from smartapp.jsonbody import json_body
from smartapp.policy import Policy
from smartapp.security import check_csrf
from smartapp.suggestions.registry import SuggestionService

bp = Blueprint("admin", __name__, url_prefix="/admin")

CHANGE_CONTROL_EXT = "smartapp.admin.change_control"
VARIANCE_METRICS = ("acceptance", "edit", "rejection", "flag")
MAX_EXPORT = 10_000

P = ParamSpec("P")
R = TypeVar("R")


def _settings() -> Settings:
    settings: Settings = current_app.extensions["smartapp.settings"]
    return settings


def _change_control() -> ChangeControl:
    control: ChangeControl = current_app.extensions[CHANGE_CONTROL_EXT]
    return control


# --- who is calling ----------------------------------------------------------------------


class _SignInNeeded(Exception):
    """No admin session: the page shows the sign-in (an API call gets 401)."""


def _audit_denied(user: SignedInUser) -> None:
    record(
        get_db(),
        actor=bound_identity(user.site, user.fhir_user),
        action=Action.ADMIN_DENIED,
        site=user.site,
        patient=None,
        detail={"path": request.path, "method": request.method},
        outcome="failure",
    )


def _page_admin() -> AdminUser:
    """The admin viewing a page; a non-admin is refused (and that is audited)."""
    user = signed_in_user()
    if user is None:
        raise _SignInNeeded()
    try:
        return admin_from(user)
    except Forbidden:
        _audit_denied(user)
        raise


def admin_page(view: Callable[P, str | Response]) -> Callable[P, str | Response | tuple[str, int]]:
    """Pages for admins only: the sign-in page without a session, 403 for anyone else."""

    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> str | Response | tuple[str, int]:
        try:
            g.admin = _page_admin()
        except _SignInNeeded:
            issuers = _settings().allowed_issuers
            return render_template("admin/signin.html", issuers=issuers), 401
        except Forbidden as exc:
            return render_template("admin/forbidden.html", error=exc), 403
        return view(*args, **kwargs)

    return wrapper


def _policy(session: Session) -> Policy:
    """The policy the drafter decides from, read fresh: an admin sees a change at once."""
    engines: SuggestionService = current_app.extensions["smartapp.engines"]
    state = load_state(session)
    return Policy(site_config=engines.config, governance=state, settings=_settings())


def _admin() -> AdminUser:
    """The admin `admin_page` let in for this request."""
    admin: AdminUser = g.admin
    return admin


def _caller(*, changing: bool = False) -> AdminUser:
    try:
        caller = api_caller()
    except Forbidden as exc:
        user = signed_in_user() if exc.code == "forbidden" else None
        if user is not None:
            _audit_denied(user)
        raise
    if changing and caller.via == "session":
        # The app-wide check compares with the token its lookup knows; this one binds the
        # request to this admin's own session.
        check_csrf(caller.csrf_token)
    return caller


@bp.after_request
def _bearer_challenge(response: Response) -> Response:
    if response.status_code == 401 and request.path.startswith("/admin/api/"):
        response.headers.setdefault("WWW-Authenticate", 'Bearer realm="smartapp-admin"')
    return response


# --- helpers -----------------------------------------------------------------------------


def _json_body() -> dict[str, Any]:
    return json_body()


def _format(choices: Sequence[str]) -> str:
    """`?format=` if given, else the best match of the Accept header (JSON by default)."""
    explicit = request.args.get("format")
    if explicit:
        return parse_choice("format", explicit, choices, default=choices[0])
    mimetypes = {"json": "application/json", "csv": "text/csv", "fhir": "application/fhir+json"}
    offered = [mimetypes[c] for c in choices]
    best = request.accept_mimetypes.best_match(offered, default=offered[0])
    # "*/*" matches everything: JSON unless the client named another type first.
    return next(c for c in choices if mimetypes[c] == best)


def _csv_response(header: Sequence[str], rows: Iterable[Mapping[str, Any]], name: str) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if row.get(f) is None else cell(str(row.get(f))) for f in header])
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _audited_change(
    caller: AdminUser,
    action: str,
    change: Callable[[Session], tuple[dict[str, Any], Any]],
    *,
    site: str | None = None,
    target: str | None = None,
) -> Any:
    """Run a change and its audit event in one transaction; audit a refusal on its own."""
    db = get_db()
    try:
        with db.session() as session:
            detail, result = change(session)
            record(
                session,
                actor=caller.actor,
                action=action,
                site=site,
                patient=None,
                detail={**detail, "via": caller.via},
            )
            return result
    except IntegrityError:
        exc: AppError = ChangeRefused(
            "Another change to the same record happened at the same time: reload and retry.",
            code="conflict",
        )
    except AppError as refused:
        exc = refused
    record(
        db,
        actor=caller.actor,
        action=action,
        site=site,
        patient=None,
        detail={
            "via": caller.via,
            "refused": exc.code,
            "message": exc.message,
            **({"target": target} if target else {}),
        },
        outcome="failure",
    )
    raise exc


# --- sign-in and pages -------------------------------------------------------------------


@bp.get("/signin")
def signin() -> Response:
    iss = normalize_issuer(request.args.get("iss", ""))
    if iss not in _settings().allowed_issuers:
        raise BadRequest("iss: choose one of the EHRs listed on the sign-in page.")
    starter: SignInStarter = current_app.extensions[SIGNIN_EXT]
    try:
        return starter(iss)
    except ImportError:
        raise AppError("Sign-in through the EHR is not available in this build.") from None


def _dashboard_context() -> dict[str, Any]:
    start, end = parse_range(request.args)
    pivot = parse_when("pivot", request.args.get("pivot"))
    window_days = parse_int(
        "window_days", request.args.get("window_days"), default=28, low=0, high=3660
    )
    min_shown = parse_int("min_shown", request.args.get("min_shown"), default=30, low=1, high=10**6)
    with get_db().session() as s:
        by = {g: compute_metrics(s, group_by=g, start=start, end=end) for g in GROUP_BYS}
        overall = compute_metrics(s, group_by="all", start=start, end=end)
        notes_by_week = notes_written(s, group_by="week", start=start, end=end)
        notes_by_site = notes_written(s, group_by="site", start=start, end=end)
        pulse_by_site = pulse_summary(s, group_by="site", start=start, end=end)
        control = rollout_control(s, start=start, end=end)
        safety = safety_summary(s, start=start, end=end, min_shown=min_shown)
        comparisons = (
            compare_periods(
                s,
                pivot=pivot,
                group_by=parse_choice(
                    "compare_by", request.args.get("compare_by"), GROUP_BYS[:3], default="kind"
                ),
                window=timedelta(days=window_days) if window_days else None,
            )
            if pivot
            else []
        )
    variance = {
        m: site_variance(by["site"], metric=m, min_shown=min_shown) for m in ("acceptance", "flag")
    }
    kinds = by["kind"]
    return {
        "args": request.args,
        "by": by,
        "overall": overall[0] if overall else None,
        "notes_by_week": notes_by_week,
        "notes_by_site": notes_by_site,
        "pulse_by_site": pulse_by_site,
        "control": control,
        "safety": safety,
        "comparisons": comparisons,
        "pivot": pivot,
        "window_days": window_days,
        "variance": variance,
        "min_shown": min_shown,
        "charts": {
            "kind": charts.outcome_bars(kinds, chart_id="chart-kind", title="Outcomes by kind"),
            "site": charts.outcome_bars(
                by["site"], chart_id="chart-site", title="Outcomes by site"
            ),
            "engine": charts.outcome_bars(
                by["engine"], chart_id="chart-engine", title="Outcomes by engine and version"
            ),
            "week": charts.outcome_bars(
                by["week"], chart_id="chart-week", title="Outcomes by week"
            ),
            "edit_distance": charts.value_bars(
                [(g.key, g.median_edit_distance) for g in kinds],
                chart_id="chart-edit-distance",
                title="Median edit distance by kind",
                unit="chars",
            ),
            "seconds": charts.value_bars(
                [(g.key, g.median_seconds_to_decision) for g in kinds],
                chart_id="chart-seconds",
                title="Median time to decision by kind",
                unit="s",
            ),
            "notes": charts.value_bars(
                [(n.key, float(n.saved)) for n in notes_by_week],
                chart_id="chart-notes",
                title="Notes written by week",
                unit="",
            ),
            "compare": charts.before_after_bars(
                comparisons, chart_id="chart-compare", title="Acceptance before and after"
            ),
        },
    }


@bp.get("")
@admin_page
def dashboard() -> str:
    with get_db().session() as s:
        baseline = baseline_summary(s)
    return render_template(
        "admin/dashboard.html",
        admin=_admin(),
        page="metrics",
        baseline=baseline,
        **_dashboard_context(),
    )


@bp.get("/flagged")
@admin_page
def flagged_page() -> str:
    start, end = parse_range(request.args)
    with get_db().session() as s:
        items = flagged_suggestions(
            s,
            start=start,
            end=end,
            site=request.args.get("site") or None,
            kind=request.args.get("kind") or None,
        )
        reviews = _reviews(s, items)
    status = request.args.get("status") or "unclosed"
    rows = [(i, reviews[i.id]) for i in items if _status_matches(reviews[i.id], status)]
    return render_template(
        "admin/flagged.html", admin=_admin(), page="flagged", rows=rows, args=request.args
    )


def _reviews(s: Any, items: Sequence[Any]) -> dict[str, dict[str, Any]]:
    found = reviews_for(s, (i.id for i in items))
    now = utcnow()
    return {i.id: review_json(found.get(i.id), flagged_at=i.flagged_at, now=now) for i in items}


def _status_matches(review: Mapping[str, Any], wanted: str) -> bool:
    if wanted == "all":
        return True
    if wanted == "unclosed":
        return bool(review["status"] != "closed")
    return bool(review["status"] == wanted)


def _view_flagged(caller: AdminUser, suggestion_id: str) -> dict[str, Any]:
    """A flagged suggestion in full: clinical content, so the view is audited first."""
    with get_db().session() as s:
        row = flagged_suggestion(s, suggestion_id)
        data = detail_json(row)
        flagged_at = max(aware(d.decided_at) for d in row.decisions if d.action == "flag")
        data["review"] = review_json(
            s.get(FlagReview, row.id), flagged_at=flagged_at, now=utcnow(), events=True
        )
        record(
            s,
            actor=caller.actor,
            action=Action.FLAGGED_VIEW,
            site=row.site,
            patient=row.patient_id,
            detail={"suggestion_id": row.id, "kind": row.kind, "via": caller.via},
        )
    return data


@bp.get("/flagged/<suggestion_id>")
@admin_page
def flagged_detail_page(suggestion_id: str) -> str:
    admin = _admin()
    item = _view_flagged(admin, suggestion_id)
    return render_template("admin/flagged_detail.html", admin=admin, page="flagged", item=item)


@bp.get("/rollout")
@admin_page
def rollout_page() -> str:
    check = None
    site, kind = request.args.get("site"), request.args.get("kind")
    with get_db().session() as s:
        rules = rollout.list_rules(s, include_retired=True)
        policy = _policy(s)
    if site and kind:
        check = policy.rollout_decision(
            kind=kind, iss=site, fhir_user=request.args.get("fhir_user") or None, now=utcnow()
        )
    return render_template(
        "admin/rollout.html",
        admin=_admin(),
        page="rollout",
        rules=rules,
        file_rules=[e for e in policy.rollout() if e.source == "file"],
        check=check,
        args=request.args,
        issuers=_settings().allowed_issuers,
    )


@bp.get("/engines")
@admin_page
def engines_page() -> str:
    with get_db().session() as s:
        versions = list_versions(s)
        switches = sorted(kill_switches(s).values(), key=lambda k: (k.scope, k.target))
    return render_template(
        "admin/engines.html",
        admin=_admin(),
        page="engines",
        versions=versions,
        switches=switches,
        min_grounding_rate=_change_control().min_grounding_rate,
        issuers=_settings().allowed_issuers,
    )


def _audit_query(args: Mapping[str, str], *, limit: int) -> AuditQuery:
    start, end = parse_range(args)
    return AuditQuery(
        actor=args.get("actor") or None,
        action=args.get("action") or None,
        patient=args.get("patient") or None,
        site=args.get("site") or None,
        start=start,
        end=end,
        limit=limit,
        offset=parse_int("offset", args.get("offset"), default=0, low=0, high=10**9),
    )


@bp.get("/audit")
@admin_page
def audit_page() -> str:
    admin = _admin()
    query = _audit_query(request.args, limit=200)
    with get_db().session() as s:
        events, total = search(s, query)
        record(
            s,
            actor=admin.actor,
            action=Action.AUDIT_SEARCH,
            site=None,
            patient=None,
            detail={**query.describe(), "results": total, "via": admin.via},
        )
    return render_template(
        "admin/audit.html",
        admin=admin,
        page="audit",
        events=events,
        total=total,
        query=query,
        args=request.args,
        export_args={k: v for k, v in request.args.items() if k not in ("offset", "format")},
    )


# --- JSON API: metrics -------------------------------------------------------------------


@bp.get("/api/metrics")
def api_metrics() -> Response:
    _caller()
    group_by = parse_choice("group_by", request.args.get("group_by"), GROUP_BYS, default="kind")
    start, end = parse_range(request.args)
    fmt = _format(("json", "csv"))
    with get_db().session() as s:
        groups = [g.to_json() for g in compute_metrics(s, group_by=group_by, start=start, end=end)]
        if fmt == "csv":
            return _csv_response(FIELDS, groups, f"metrics-by-{group_by}.csv")
        # The EHR baseline (smartapp.admin.baseline): before vs after go-live, all dates.
        baseline = baseline_summary(s)
        # Inside vs outside each partial rollout (smartapp.admin.control), in the period.
        control = rollout_control(s, start=start, end=end)
        # Flags, dropped/unverified statements, safety hits; by age band and sex too.
        safety = safety_summary(s, start=start, end=end)
    return jsonify(
        {"groups": groups, "baseline": baseline, "rollout_control": control, "safety": safety}
    )


@bp.get("/api/metrics/compare")
def api_compare() -> Response:
    _caller()
    pivot = parse_when("pivot", request.args.get("pivot"))
    if pivot is None:
        raise BadRequest("pivot: give the rollout date (YYYY-MM-DD).")
    group_by = parse_choice("group_by", request.args.get("group_by"), GROUP_BYS, default="kind")
    days = parse_int("window_days", request.args.get("window_days"), default=0, low=0, high=3660)
    with get_db().session() as s:
        rows = compare_periods(
            s, pivot=pivot, group_by=group_by, window=timedelta(days=days) if days else None
        )
    return jsonify({"pivot": pivot.isoformat(), "groups": [r.to_json() for r in rows]})


@bp.get("/api/metrics/variance")
def api_variance() -> Response:
    _caller()
    metric = parse_choice(
        "metric", request.args.get("metric"), VARIANCE_METRICS, default="acceptance"
    )
    min_shown = parse_int("min_shown", request.args.get("min_shown"), default=30, low=1, high=10**6)
    start, end = parse_range(request.args)
    with get_db().session() as s:
        groups = compute_metrics(s, group_by="site", start=start, end=end)
    rows = site_variance(groups, metric=metric, min_shown=min_shown)
    return jsonify({"sites": [r.to_json() for r in rows]})


@bp.get("/api/notes")
def api_notes() -> Response:
    _caller()
    group_by = parse_choice("group_by", request.args.get("group_by"), GROUP_BYS, default="week")
    start, end = parse_range(request.args)
    with get_db().session() as s:
        rows = notes_written(s, group_by=group_by, start=start, end=end)
    return jsonify({"groups": [r.to_json() for r in rows]})


@bp.get("/api/flagged")
def api_flagged() -> Response:
    _caller()
    start, end = parse_range(request.args)
    limit = parse_int("limit", request.args.get("limit"), default=200, low=1, high=1000)
    with get_db().session() as s:
        items = flagged_suggestions(
            s,
            start=start,
            end=end,
            site=request.args.get("site") or None,
            kind=request.args.get("kind") or None,
            limit=limit,
        )
        reviews = _reviews(s, items)
    status = parse_choice(
        "status",
        request.args.get("status"),
        ("all", "unclosed", *REVIEW_STATES),
        default="all",
    )
    return jsonify(
        {
            "flagged": [
                {**i.to_json(), "review": reviews[i.id]}
                for i in items
                if _status_matches(reviews[i.id], status)
            ]
        }
    )


@bp.get("/api/flagged/<suggestion_id>")
def api_flagged_detail(suggestion_id: str) -> Response:
    return jsonify({"suggestion": _view_flagged(_caller(), suggestion_id)})


@bp.post("/api/flagged/<suggestion_id>/review")
def api_flagged_review(suggestion_id: str) -> Response:
    """One step of the review workflow (triage, assign, comment, close, reopen)."""
    caller = _caller(changing=True)
    step = ReviewStep.from_json(_json_body())
    now = utcnow()
    with get_db().session() as s:
        row = flagged_suggestion(s, suggestion_id)
        review = apply_step(s, row.id, step, actor=caller.actor, now=now)
        flagged_at = max(aware(d.decided_at) for d in row.decisions if d.action == "flag")
        data = review_json(review, flagged_at=flagged_at, now=now, events=True)
        record(
            s,
            actor=caller.actor,
            action=Action.FLAGGED_REVIEW,
            site=row.site,
            patient=None,
            detail={
                "suggestion_id": row.id,
                "step": step.step,
                "status": review.status,
                "close_action": review.close_action,
                "linked_change": review.linked_change,
                "via": caller.via,
            },
        )
    return jsonify({"review": data})


# --- JSON API: audit ---------------------------------------------------------------------


@bp.get("/api/audit")
def api_audit() -> Response:
    caller = _caller()
    fmt = _format(("json", "csv", "fhir"))
    limit = (
        parse_int("limit", request.args.get("limit"), default=100, low=1, high=1000)
        if fmt == "json"
        else MAX_EXPORT
    )
    query = _audit_query(request.args, limit=limit)
    with get_db().session() as s:
        events, total = search(s, query)
        record(
            s,
            actor=caller.actor,
            action=Action.AUDIT_SEARCH if fmt == "json" else Action.AUDIT_EXPORT,
            site=None,
            patient=None,
            detail={**query.describe(), "format": fmt, "results": total, "via": caller.via},
        )
    if fmt == "csv":
        return Response(
            to_csv(events),
            mimetype="text/csv",
            headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
        )
    if fmt == "fhir":
        response = jsonify(to_fhir_bundle(events))
        response.mimetype = "application/fhir+json"
        return response
    return jsonify(
        {
            "total": total,
            "events": [
                {
                    "id": e.id,
                    "recorded": e.recorded.isoformat(),
                    "actor": e.actor,
                    "action": e.action,
                    "site": e.site,
                    "patient": e.patient,
                    "outcome": e.outcome,
                    "detail": e.detail,
                }
                for e in events
            ],
        }
    )


# --- JSON API: rollout -------------------------------------------------------------------


@bp.get("/api/rollout")
def api_rollout_rules() -> Response:
    _caller()
    include_retired = request.args.get("include_retired") in ("1", "true", "yes")
    with get_db().session() as s:
        rules = [r.to_json() for r in rollout.list_rules(s, include_retired=include_retired)]
    return jsonify({"rules": rules})


@bp.post("/api/rollout")
def api_rollout_add() -> tuple[Response, int]:
    caller = _caller(changing=True)
    body = _json_body()
    rule = rollout.RuleInput(
        site=body_str(body, "site") or ANY,
        kind=body_str(body, "kind") or ANY,
        enabled=body_bool(body, "enabled", default=True),
        percentage=body_number(body, "percentage", default=100.0),
        effective_from=body_when(body, "effective_from"),
        effective_to=body_when(body, "effective_to", end=True),
        reason=body_str(body, "reason", required=False),
    ).validated()

    def change(s: Session) -> tuple[dict[str, Any], Any]:
        row = rollout.add_rule(s, rule, actor=caller.actor, now=utcnow())
        data = row.to_json()
        return {"rule": data}, data

    data = _audited_change(
        caller, Action.ROLLOUT_SET, change, site=None if rule.site == ANY else rule.site
    )
    return jsonify({"rule": data}), 201


@bp.delete("/api/rollout/<rule_id>")
def api_rollout_retire(rule_id: str) -> Response:
    caller = _caller(changing=True)

    def change(s: Session) -> tuple[dict[str, Any], Any]:
        data = rollout.retire_rule(s, rule_id, actor=caller.actor, now=utcnow()).to_json()
        return {"rule": data}, data

    return jsonify({"rule": _audited_change(caller, Action.ROLLOUT_REMOVE, change)})


@bp.get("/api/rollout/decision")
def api_rollout_decision() -> Response:
    _caller()
    site, kind = request.args.get("site"), request.args.get("kind")
    if not site:
        raise BadRequest("site: give the issuer's FHIR base URL.")
    if not kind:
        raise BadRequest("kind: give a suggestion kind.")
    at = parse_when("at", request.args.get("at")) or utcnow()
    with get_db().session() as s:
        policy = _policy(s)
    decision = policy.rollout_decision(
        kind=kind, iss=site, fhir_user=request.args.get("fhir_user") or None, now=at
    )
    return jsonify(
        {
            "enabled": decision.enabled,
            "reason": decision.reason,
            "rule": decision.rule_id,
            "source": decision.source,
        }
    )


@bp.get("/api/policy/rollout")
def api_policy_rollout() -> Response:
    """Every rollout rule in force or to come, the site file's and the dashboard's, with
    their source: the one list the drafter decides from."""
    _caller()
    with get_db().session() as s:
        policy = _policy(s)
    return jsonify({"version": policy.version, "rules": [e.to_json() for e in policy.rollout()]})


@bp.get("/api/policy/settings")
def api_policy_settings() -> Response:
    """The environment's part of the policy: each setting, its value (a secret's never:
    "(secret, set)") and where it came from (environment, `.env`, instance folder, default)."""
    _caller()
    with get_db().session() as s:
        policy = _policy(s)
    return jsonify(
        {"version": policy.version, "settings": [v.to_json() for v in policy.settings_values()]}
    )


# --- JSON API: engine registry and kill switches -----------------------------------------


@bp.get("/api/pulse")
def api_pulse() -> Response:
    """The clinician pulse: asked, answered, skipped and mean scores per site or week."""
    _caller()
    start, end = parse_range(request.args)
    group_by = parse_choice(
        "group_by", request.args.get("group_by"), ("site", "week", "all"), default="site"
    )
    with get_db().session() as s:
        groups = pulse_summary(s, group_by=group_by, start=start, end=end)
    return jsonify({"groups": [g.to_json() for g in groups]})


@bp.get("/api/model-cards")
def api_model_cards() -> Response:
    """Each engine version with its HTI-1 source attributes; `?format=fhir` for Devices."""
    _caller()
    fmt = _format(("json", "fhir"))
    with get_db().session() as s:
        cards = model_cards(s)
    if fmt == "fhir":
        response = jsonify(cards_as_fhir(cards))
        response.mimetype = "application/fhir+json"
        return response
    return jsonify({"cards": cards})


@bp.get("/api/engines")
def api_engines() -> Response:
    _caller()
    with get_db().session() as s:
        versions = [v.to_json(with_history=True) for v in list_versions(s)]
    return jsonify({"versions": versions, "minGroundingRate": _change_control().min_grounding_rate})


@bp.post("/api/engines")
def api_engine_propose() -> tuple[Response, int]:
    caller = _caller(changing=True)
    body = _json_body()
    engine = body_str(body, "engine") or ""
    version = body_str(body, "version") or ""
    model = body_str(body, "model", required=False)
    kinds = body_list(body, "kinds")
    site = body_str(body, "site", required=False)
    reason = body_str(body, "reason", required=False)

    def change(s: Session) -> tuple[dict[str, Any], Any]:
        row = _change_control().propose(
            s,
            engine=engine,
            version=version,
            model=model,
            kinds=kinds,
            site=site,
            actor=caller.actor,
            reason=reason,
            now=utcnow(),
        )
        data = row.to_json(with_history=False)
        return {"engine_version": _version_ref(data), "kinds": data["kinds"]}, data

    return jsonify({"version": _audited_change(caller, Action.ENGINE_PROPOSE, change)}), 201


def _version_ref(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": data["id"],
        "engine": data["engine"],
        "version": data["version"],
        "site": data["site"],
    }


def _engine_step(
    version_id: str,
    action: str,
    step: Callable[[ChangeControl, Session, AdminUser, str | None], Any],
) -> Response:
    caller = _caller(changing=True)
    body = json_body(required=False)
    reason = body_str(body, "reason", required=False)

    def change(s: Session) -> tuple[dict[str, Any], Any]:
        result = step(_change_control(), s, caller, reason)
        row = result[0] if isinstance(result, tuple) else result
        restored = result[1] if isinstance(result, tuple) else []
        s.flush()
        data = row.to_json(with_history=False)
        detail: dict[str, Any] = {"engine_version": _version_ref(data), "state": data["state"]}
        if reason:
            detail["reason"] = reason
        if data["supersedes"] and action == Action.ENGINE_ACTIVATE:
            detail["superseded"] = data["supersedes"]
        if restored:
            detail["restored"] = [_version_ref(r.to_json()) for r in restored]
        return detail, {**data, "restored": [r.to_json() for r in restored]}

    return jsonify({"version": _audited_change(caller, action, change, target=version_id)})


@bp.post("/api/engines/<version_id>/evaluation")
def api_engine_evaluate(version_id: str) -> Response:
    body = _json_body()
    if "evaluation" not in body and ("report" in body or "kinds" in body):
        # A posted report is whatever its sender typed: only the app's own runs count.
        raise BadRequest(
            "Posted evaluation reports are not accepted: run `smartapp evaluate --record` "
            'where the app runs and send {"evaluation": "<the SHA-256 it prints>"}.',
            code="report_not_accepted",
        )
    evaluation = body.get("evaluation")
    return _engine_step(
        version_id,
        Action.ENGINE_EVALUATE,
        lambda cc, s, who, why: cc.evaluate(
            s, version_id, evaluation=evaluation, actor=who.actor, reason=why, now=utcnow()
        ),
    )


@bp.post("/api/engines/<version_id>/approve")
def api_engine_approve(version_id: str) -> Response:
    return _engine_step(
        version_id,
        Action.ENGINE_APPROVE,
        lambda cc, s, who, why: cc.approve(
            s, version_id, actor=who.actor, reason=why, now=utcnow()
        ),
    )


@bp.post("/api/engines/<version_id>/activate")
def api_engine_activate(version_id: str) -> Response:
    return _engine_step(
        version_id,
        Action.ENGINE_ACTIVATE,
        lambda cc, s, who, why: cc.activate(
            s, version_id, actor=who.actor, reason=why, now=utcnow()
        ),
    )


@bp.post("/api/engines/<version_id>/rollback")
def api_engine_rollback(version_id: str) -> Response:
    return _engine_step(
        version_id,
        Action.ENGINE_ROLLBACK,
        lambda cc, s, who, why: cc.rollback(
            s, version_id, actor=who.actor, reason=why, now=utcnow()
        ),
    )


@bp.get("/api/engines/active")
def api_engine_active() -> Response:
    _caller()
    kind, site = request.args.get("kind"), request.args.get("site")
    if not kind:
        raise BadRequest("kind: give a suggestion kind.")
    if not site:
        raise BadRequest("site: give the issuer's FHIR base URL.")
    with get_db().session() as s:
        engine = active_engine(s, kind=kind, site=site)
        name = request.args.get("engine") or (engine.name if engine else "")
        killed = is_killed(s, kind=kind, engine=name)
    return jsonify(
        {
            "engine": None
            if engine is None
            else {
                "id": engine.id,
                "name": engine.name,
                "version": engine.version,
                "model": engine.model,
                "kinds": list(engine.kinds),
                "site": engine.site,
            },
            "killed": killed,
        }
    )


@bp.get("/api/kill-switches")
def api_kill_switches() -> Response:
    _caller()
    with get_db().session() as s:
        switches = [k.to_json() for k in kill_switches(s).values()]
    return jsonify({"switches": sorted(switches, key=lambda k: (k["scope"], k["target"]))})


@bp.post("/api/kill-switches")
def api_kill_switch_set() -> Response:
    caller = _caller(changing=True)
    body = _json_body()
    scope = parse_choice("scope", body_str(body, "scope"), KILL_SCOPES, default="kind")
    target = body_str(body, "target") or ""
    engaged = body_bool(body, "engaged")
    reason = body_str(body, "reason", required=False)

    def change(s: Session) -> tuple[dict[str, Any], Any]:
        row = ChangeControl.set_kill_switch(
            s,
            scope=scope,
            target=target,
            engaged=engaged,
            actor=caller.actor,
            reason=reason,
            now=utcnow(),
        )
        data = row.to_json()
        return {"scope": scope, "target": target, "engaged": engaged, "reason": reason}, data

    return jsonify({"switch": _audited_change(caller, Action.KILL_SWITCH, change)})

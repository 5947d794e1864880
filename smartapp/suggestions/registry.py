"""The suggestion service: for each kind the site enabled, engine → grounding verifier → template.

The site configuration chooses the engine per kind (built-in rules or the LLM); every
engine's output goes through the grounding verifier before a template renders it, and
each kind is timed and counted for `smartapp evaluate` and the governance metrics. A
failing engine costs its kind, never the request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import requests

from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.httplimits import limited_session
from smartapp.siteconfig import EffectiveConfig, SiteConfig, load_site_config, normalize_issuer
from smartapp.suggestions.builtin import BuiltinEngine
from smartapp.suggestions.crossref import deduplicate
from smartapp.suggestions.grounding import DROPPED, GroundingVerifier, verify_suggestions
from smartapp.suggestions.interfaces import EngineInfo, Statement, Suggestion, SuggestionEngine
from smartapp.suggestions.llm import LLMEngine
from smartapp.suggestions.templates import TemplateRenderer

if TYPE_CHECKING:
    from smartapp.config import Settings

log = logging.getLogger(__name__)

#: LLM requests one process makes at once (SMARTAPP_LLM_CONCURRENCY): the pool's threads
#: are the only ones that wait on the endpoint, so 32 clinicians cannot take the request
#: threads; kinds beyond it queue, and one still queued at its deadline falls back unasked.
DEFAULT_LLM_CONCURRENCY = 8

INTERIM = "The AI draft is being written; showing rule-based suggestions until it arrives"

NO_ENDPOINT = (
    "No LLM endpoint is configured (SMARTAPP_LLM_BASE_URL); showing rule-based suggestions"
)
NO_MODEL = (
    "No LLM model is configured (SMARTAPP_LLM_MODEL or [llm] model); showing rule-based suggestions"
)
UNGROUNDED = "The LLM's statements did not pass the grounding check"
ENGINE_FAILED = "The LLM engine failed"
SHOWING_RULES = "; showing rule-based suggestions"


@dataclass(frozen=True, kw_only=True)
class LLMSettings:
    """Where the LLM is: from SMARTAPP_LLM_BASE_URL, SMARTAPP_LLM_MODEL, SMARTAPP_LLM_API_KEY."""

    base_url: str
    model: str | None = None
    api_key: str | None = None
    #: Seconds; None uses the site configuration's `[llm] timeout_seconds`.
    timeout: float | None = None

    def __repr__(self) -> str:  # the key stays out of logs and tracebacks
        from smartapp.config import hide_password

        # A proxy's URL may carry a password (https://user:pw@host): shown without it.
        return f"LLMSettings(base_url={hide_password(self.base_url)!r}, model={self.model!r})"

    @classmethod
    def from_values(
        cls, base_url: str | None, model: str | None, api_key: str | None
    ) -> LLMSettings | None:
        """None when no endpoint is configured (the built-in engine serves)."""
        if not base_url:
            return None
        return cls(base_url=base_url.rstrip("/"), model=model or None, api_key=api_key or None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LLMSettings | None:
        return cls.from_values(
            environ.get("SMARTAPP_LLM_BASE_URL"),
            environ.get("SMARTAPP_LLM_MODEL"),
            environ.get("SMARTAPP_LLM_API_KEY"),
        )


@dataclass(frozen=True, kw_only=True)
class KindRun:
    """One kind for one chart: what was shown, and how the configured engine did."""

    kind: str
    #: The configured engine ("builtin" or "llm") and its EngineInfo.
    engine: str
    engine_info: EngineInfo
    #: Shown suggestions (verified, rendered), in order.
    suggestions: tuple[Suggestion, ...]
    #: The configured engine's own statements: checked, passed, dropped, marked unverified.
    checked: int = 0
    passed: int = 0
    dropped: int = 0
    unverified_shown: int = 0
    #: Statements dropped in total, the fallback's included.
    dropped_total: int = 0
    #: Why the built-in rules answered instead of the configured engine, if they did.
    fallback_reason: str | None = None
    elapsed_ms: float = 0.0
    #: (suggestion title, statement with its issues) for every statement the verifier
    #: dropped, the fallback's included: for `smartapp draft`, never shown to a clinician.
    dropped_statements: tuple[tuple[str, Statement], ...] = ()
    #: Cards of the LLM's answer not shown because they named another kind than the one
    #: asked for: reason (`unknown`, `not_enabled`, `other_kind`) → count.
    refused_cards: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SuggestionRun:
    kinds: tuple[KindRun, ...]

    @property
    def suggestions(self) -> list[Suggestion]:
        return [s for run in self.kinds for s in run.suggestions]


@dataclass(frozen=True, kw_only=True)
class StartedRun:
    """A run that answers now: every kind drafted, the LLM's kinds by the rules for the moment.

    `pending` holds each LLM kind's own run, arriving in the background before `deadline`
    (time.monotonic(), one for the whole request); `run` has the rules standing in for them.
    """

    run: SuggestionRun
    pending: Mapping[str, Future[KindRun]]
    deadline: float


@dataclass
class _Others:
    """A request's other kinds, for an LLM kind finishing beside them (set once drafted)."""

    ready: threading.Event = field(default_factory=threading.Event)
    runs: list[KindRun] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class EngineChoice:
    """Governance's say over one kind's engine, over the site configuration's.

    `engine` "builtin" or "llm"; `model`/`version` pin an approved LLM version; `reason`
    is shown with the suggestions when governance replaced the configured engine.
    """

    engine: str
    model: str | None = None
    version: str | None = None
    reason: str | None = None


class SuggestionService:
    """Drafts the suggestions for a chart, as the site configured them.

    `llm` is where the LLM endpoint is (None: no LLM; kinds configured for it fall back
    to the built-in rules, visibly).
    """

    def __init__(
        self,
        config: SiteConfig,
        llm: LLMSettings | None = None,
        *,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.perf_counter,
        llm_concurrency: int = DEFAULT_LLM_CONCURRENCY,
    ) -> None:
        self.config = config
        self.llm = llm
        self.llm_concurrency = max(1, llm_concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.builtin = BuiltinEngine()
        self._session = session or limited_session()
        self._clock = clock
        #: Told of every drafted kind (the app's metrics: engine latency, fallbacks).
        self.on_kinds_drafted: Callable[[Sequence[KindRun]], None] | None = None
        self._llm_engines: dict[tuple[str | None, str, str | None], LLMEngine] = {}
        self._renderers: dict[str | None, TemplateRenderer] = {}
        uses_llm = any(k.engine == "llm" for e in config.all_effective() for k in e.kinds)
        if uses_llm and llm is None:
            log.warning("the site configuration selects the LLM engine but no endpoint is set")

    def announce(self, logger: logging.Logger | None = None) -> None:
        """Log, once at start-up, which engine serves which kind (per site where it differs).

        Setting `SMARTAPP_LLM_*` alone changes nothing (the site file chooses the engine):
        say so when an endpoint is configured and no kind uses it.
        """
        logger = logger or log
        for effective in self.config.all_effective():
            where = effective.issuer or "every site"
            kinds = ", ".join(f"{k.kind}={k.engine}" for k in effective.kinds) or "none"
            logger.info("suggestion engines for %s: %s", where, kinds)
        uses_llm = any(k.engine == "llm" for e in self.config.all_effective() for k in e.kinds)
        if self.llm is not None and not uses_llm:
            logger.warning(
                "SMARTAPP_LLM_* configures an LLM endpoint but no kind uses it: set "
                'engine = "llm" for a kind in the site configuration (SMARTAPP_CONFIG), '
                "or activate an LLM engine version in governance"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> SuggestionService:
        """The service the app uses: `SMARTAPP_CONFIG` (validated now) and `SMARTAPP_LLM_*`.

        Raises SiteConfigError, naming the file, line and key, when the configuration is bad.
        """
        config = load_site_config(settings.site_config_path)
        llm = LLMSettings.from_values(
            settings.llm_base_url, settings.llm_model, settings.llm_api_key
        )
        return cls(config, llm, llm_concurrency=settings.llm_concurrency)

    def llm_pool(self) -> ThreadPoolExecutor:
        """The process's LLM threads (made on first use: most sites never ask an LLM)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.llm_concurrency, thread_name_prefix="smartapp-llm"
                )
            return self._pool

    def close(self) -> None:
        """Stop the LLM threads: queued kinds are cancelled, running ones end by their deadline."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    # The lead's `Drafter` protocol (notes.service) -------------------------------------

    def draft(self, snapshot: ChartSnapshot, *, iss: str) -> list[Suggestion]:
        return self.suggest_all(snapshot, iss)

    def suggest_all(
        self,
        snapshot: ChartSnapshot,
        iss: str | None = None,
        *,
        fhir_user: str | None = None,
        today: date | None = None,
    ) -> list[Suggestion]:
        """Verified, rendered suggestions of every kind enabled for this issuer (and user)."""
        kinds = self.kinds_for(iss, fhir_user=fhir_user, today=today)
        return self.run(snapshot, iss=iss, kinds=kinds, enabled=kinds).suggestions

    def kinds_for(
        self, iss: str | None, *, fhir_user: str | None = None, today: date | None = None
    ) -> tuple[str, ...]:
        """The enabled kinds in order, less those this clinician is outside the rollout of."""
        effective = self.config.for_issuer(iss)
        day = today or datetime.now(UTC).date()
        return tuple(
            k
            for k in effective.kind_ids
            if effective.rollout_for(k).includes(
                fhir_user, site=normalize_issuer(iss or ""), kind=k, today=day
            )
        )

    # Running -----------------------------------------------------------------------

    def engine_for(
        self, effective: EffectiveConfig, kind: str, choice: EngineChoice | None = None
    ) -> tuple[SuggestionEngine, str | None]:
        """The engine configured for `kind`, or the built-in one and why it stands in."""
        kind_config = effective.kind(kind)
        configured = kind_config.engine if kind_config is not None else "builtin"
        wanted = choice.engine if choice is not None else configured
        if wanted != "llm":
            # Governance may switch the configured LLM off: say so with the rules' output.
            reason = choice.reason if choice is not None and configured == "llm" else None
            return self.builtin, reason
        if self.llm is None:
            return self.builtin, NO_ENDPOINT
        model = (choice.model if choice else None) or effective.llm.model or self.llm.model
        if not model:
            return self.builtin, NO_MODEL
        version = (choice.version if choice else None) or effective.llm.version
        cache_key = (effective.issuer, model, version)
        engine = self._llm_engines.get(cache_key)
        if engine is None:
            engine = LLMEngine(
                base_url=self.llm.base_url,
                model=model,
                api_key=self.llm.api_key,
                timeout=self.llm.timeout or effective.llm.timeout_seconds,
                version=version,
                fallback=self.builtin,
                send_patient_name=effective.llm.send_patient_name,
                auth_header=effective.llm.auth_header,
                api_version=effective.llm.api_version,
                temperature=effective.llm.temperature,
                max_observations_per_code=effective.llm.max_observations_per_code,
                max_answer_bytes=effective.llm.max_answer_kb * 1024,
                session=self._session,
            )
            self._llm_engines[cache_key] = engine
        return engine, None

    def configured_engine_info(self, iss: str | None, kind: str) -> EngineInfo:
        engine, _ = self.engine_for(self.config.for_issuer(iss), kind)
        return engine.info

    def renderer(self, effective: EffectiveConfig) -> TemplateRenderer:
        renderer = self._renderers.get(effective.issuer)
        if renderer is None:
            renderer = TemplateRenderer(effective.templates)
            self._renderers[effective.issuer] = renderer
        return renderer

    def run(
        self,
        snapshot: ChartSnapshot,
        *,
        iss: str | None = None,
        kinds: Iterable[str] | None = None,
        choices: Mapping[str, EngineChoice] | None = None,
        enabled: Iterable[str] | None = None,
    ) -> SuggestionRun:
        """Every kind with its configured engine's own output (waits for the LLM's kinds)."""
        started = self.start(snapshot, iss=iss, kinds=kinds, choices=choices, enabled=enabled)
        arrived = {kind: future.result() for kind, future in started.pending.items()}
        return SuggestionRun(kinds=tuple(arrived.get(r.kind, r) for r in started.run.kinds))

    def start(
        self,
        snapshot: ChartSnapshot,
        *,
        iss: str | None = None,
        kinds: Iterable[str] | None = None,
        choices: Mapping[str, EngineChoice] | None = None,
        enabled: Iterable[str] | None = None,
    ) -> StartedRun:
        """Draft every kind now, the LLM's in the background: the clinician never waits on it.

        Each LLM kind is asked at once on the process's LLM threads, all under one
        deadline (the site's `timeout_seconds` from now); meanwhile the rules draft it,
        labelled as standing in, so that the sidebar has something to show at once.
        `enabled` is every kind this clinician is shown (default: the site's kinds), of
        which `kinds` may be only those drafted now: no draft carries another kind's content
        unless that kind is enabled.
        """
        effective = self.config.for_issuer(iss)
        wanted = effective.kind_ids if kinds is None else tuple(kinds)
        wanted = tuple(k for k in wanted if effective.kind(k) is not None)
        shown = frozenset(effective.kind_ids if enabled is None else enabled)
        chosen = dict(choices or {})
        verifier = GroundingVerifier.of(snapshot)
        deadline = time.monotonic() + self.timeout_for(effective)
        pending: dict[str, Future[KindRun]] = {}
        others = _Others()
        for kind in wanted:
            if isinstance(self.engine_for(effective, kind, chosen.get(kind))[0], LLMEngine):
                pending[kind] = self.llm_pool().submit(
                    self._run_remote,
                    snapshot,
                    effective,
                    kind,
                    verifier,
                    chosen.get(kind),
                    deadline,
                    others,
                    shown,
                )
        try:
            raw = [
                self._run_kind(
                    snapshot,
                    effective,
                    kind,
                    verifier,
                    chosen.get(kind),
                    interim=kind in pending,
                    enabled=shown,
                )
                for kind in wanted
            ]
            others.runs = raw
        finally:
            others.ready.set()
        run = SuggestionRun(kinds=self._finish(effective, raw, verifier))
        if self.on_kinds_drafted is not None:
            # The rules standing in are not the LLM's run: its own is told when it arrives.
            self.on_kinds_drafted([r for r in run.kinds if r.kind not in pending])
        return StartedRun(run=run, pending=pending, deadline=deadline)

    def timeout_for(self, effective: EffectiveConfig) -> float:
        """Seconds an LLM kind may take: `[llm] timeout_seconds`, unless the settings say."""
        if self.llm is not None and self.llm.timeout:
            return self.llm.timeout
        return effective.llm.timeout_seconds

    def _run_remote(
        self,
        snapshot: ChartSnapshot,
        effective: EffectiveConfig,
        kind: str,
        verifier: GroundingVerifier,
        choice: EngineChoice | None,
        deadline: float,
        others: _Others,
        enabled: frozenset[str],
    ) -> KindRun:
        run = self._run_kind(
            snapshot, effective, kind, verifier, choice, deadline=deadline, enabled=enabled
        )
        # Finished beside the request's other kinds (each result stated in one card only),
        # with this kind's own run in place of the rules that stood in for it.
        others.ready.wait()
        runs = [run if r.kind == kind else r for r in others.runs] or [run]
        run = next(r for r in self._finish(effective, runs, verifier) if r.kind == kind)
        if self.on_kinds_drafted is not None:
            try:
                self.on_kinds_drafted([run])
            except Exception as exc:  # noqa: BLE001 - metrics must not cost the draft
                log.error("recording the LLM run failed: %s", type(exc).__name__)
        return run

    def _run_kind(
        self,
        snapshot: ChartSnapshot,
        effective: EffectiveConfig,
        kind: str,
        verifier: GroundingVerifier,
        choice: EngineChoice | None = None,
        *,
        interim: bool = False,
        deadline: float | None = None,
        enabled: frozenset[str] | None = None,
    ) -> KindRun:
        started = self._clock()
        kind_config = effective.kind(kind)
        assert kind_config is not None
        options = effective.engine_options(kind, enabled=enabled)
        engine, stand_in = self.engine_for(effective, kind, choice)
        configured = (
            engine.info if stand_in is None else EngineInfo(name="llm", version="unavailable")
        )
        if interim:
            # The rules answer for now; the LLM's own run of this kind is on its way.
            engine, stand_in = self.builtin, INTERIM

        produced, refused = self._safe_suggest(engine, snapshot, kind, options, deadline=deadline)
        if stand_in is not None:
            produced = [
                replace(s, engine=replace(s.engine, fallback_reason=stand_in, interim=interim))
                for s in produced
            ]
        checked = verify_suggestions(produced, verifier, unverified=effective.unverified)
        own = [s for s in checked if s.engine.fallback_reason is None]
        counts = _totals(own)
        dropped_total = _totals(checked)["dropped"]
        fallback_reason = next(
            (s.engine.fallback_reason for s in checked if s.engine.fallback_reason), None
        )
        if stand_in is not None:
            fallback_reason = stand_in

        shown = [s for s in checked if s.statements]
        lost = _dropped(checked)
        if isinstance(engine, LLMEngine) and own and not shown:
            # Everything the model said failed verification: the rules answer instead.
            produced = engine.fall_back(snapshot, kind, options, UNGROUNDED)
            again = verify_suggestions(produced, verifier, unverified=effective.unverified)
            dropped_total += _totals(again)["dropped"]
            shown = [s for s in again if s.statements]
            lost += _dropped(again)
            fallback_reason = UNGROUNDED + SHOWING_RULES

        return KindRun(
            kind=kind,
            engine=kind_config.engine,
            engine_info=configured,
            suggestions=tuple(shown),
            checked=counts["checked"],
            passed=counts["passed"],
            dropped=counts["dropped"],
            unverified_shown=counts["unverified_shown"],
            dropped_total=dropped_total,
            fallback_reason=fallback_reason,
            elapsed_ms=(self._clock() - started) * 1000.0,
            dropped_statements=tuple(lost),
            refused_cards=refused,
        )

    def _finish(
        self, effective: EffectiveConfig, runs: Sequence[KindRun], verifier: GroundingVerifier
    ) -> tuple[KindRun, ...]:
        """Each result stated in one card only (crossref), then every card rendered."""
        flat = [s for run in runs for s in run.suggestions]
        deduplicated = iter(deduplicate(flat, verifier))
        renderer = self.renderer(effective)
        finished: list[KindRun] = []
        for run in runs:
            kind_config = effective.kind(run.kind)
            assert kind_config is not None
            mine = [next(deduplicated) for _ in run.suggestions]
            rendered = tuple(
                replace(
                    s,
                    rendered_text=renderer.render(
                        s, style=kind_config.style, detail=kind_config.detail
                    ),
                )
                for s in mine
                if s.statements
            )
            finished.append(replace(run, suggestions=rendered))
        return tuple(finished)

    def _safe_suggest(
        self,
        engine: SuggestionEngine,
        snapshot: ChartSnapshot,
        kind: str,
        options: Mapping[str, Any],
        *,
        deadline: float | None = None,
    ) -> tuple[list[Suggestion], Mapping[str, int]]:
        """The engine's suggestions (the rules' if it raised), and the LLM's refused cards."""
        try:
            if isinstance(engine, LLMEngine):
                drafted = engine.draft(snapshot, kind, options, deadline=deadline)
                return drafted.suggestions, drafted.refused
            return list(engine.suggest(snapshot, kind, options)), {}
        except Exception as exc:  # noqa: BLE001 - one kind failing must not cost the sidebar
            # The exception type only: its message could quote chart data.
            log.error("engine %s failed on %s: %s", engine.info.name, kind, type(exc).__name__)
            if engine is not self.builtin:
                try:
                    info = replace(self.builtin.info, fallback_reason=ENGINE_FAILED + SHOWING_RULES)
                    return [
                        replace(s, engine=info)
                        for s in self.builtin.suggest(snapshot, kind, options)
                    ], {}
                except Exception as inner:  # noqa: BLE001
                    log.error("built-in engine failed on %s: %s", kind, type(inner).__name__)
            return [], {}


def _dropped(suggestions: Sequence[Suggestion]) -> list[tuple[str, Statement]]:
    return [(s.title, d) for s in suggestions for d in s.extra.get(DROPPED, ())]


def _totals(suggestions: Sequence[Suggestion]) -> dict[str, int]:
    totals = {"checked": 0, "passed": 0, "dropped": 0, "unverified_shown": 0}
    for s in suggestions:
        if s.verification is not None:
            totals["checked"] += s.verification.checked
            totals["passed"] += s.verification.passed
            totals["dropped"] += s.verification.dropped
            totals["unverified_shown"] += s.verification.unverified_shown
    return totals

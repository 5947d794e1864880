// The clinician sidebar: suggestions with their sources, one decision each, then the note.
// Keyboard first (see keys.js); chart data is only ever set as text, never as HTML.

import { api, ApiError, usesWindowToken } from "./api.js";
import { $, $$, el, setStatus, plural } from "./dom.js";
import { createCard, updateCard, toggleDiff, toggleCard, decisionLabel } from "./cards.js";
import { renderChanges } from "./changes.js";
import { closeSources } from "./sources.js";
import { commandFor, isTyping, helpRows } from "./keys.js";
import { showAbout } from "./about.js";
import * as note from "./note.js";
import * as drafts from "./drafts.js";

const state = {
  context: null,
  suggestions: [],
  current: 0, // index of the card the keys act on
  actions: new Map(), // suggestion id -> clicks/keys spent on it (sent with each decision)
  inFlight: new Set(), // suggestion ids whose decision is being recorded
  loading: false,
  pending: [], // kinds whose AI draft is on its way (the rules stand in meanwhile)
  pollTimer: null,
};

// While AI drafts are on their way: ask every POLL_MS whether some arrived, at most POLL_LIMIT times.
const POLL_MS = 1000;
const POLL_LIMIT = 180;

// -- small helpers ---------------------------------------------------------------------

function messageOf(err) {
  if (err instanceof ApiError) return err.message;
  return "Something went wrong. Try again.";
}

/** Say something to screen readers (the visible state changes too). */
function announce(text) {
  const region = $("#announcer");
  region.textContent = "";
  // A fresh node each time, so the same words twice are read twice.
  requestAnimationFrame(() => {
    region.textContent = text;
  });
}

function countAction(id) {
  state.actions.set(id, (state.actions.get(id) ?? 0) + 1);
}

const cards = () => $$("#suggestion-list > .card");
const pendingIndexes = () => state.suggestions.flatMap((s, i) => (s.decision ? [] : [i]));

// -- header: banner and chart status -----------------------------------------------------

function renderBanner(ctx) {
  const banner = $("#patient-banner");
  if (!ctx.needPatientBanner) {
    banner.hidden = true;
    return;
  }
  const parts = [ctx.patient.gender, ctx.patient.birthDate ? `born ${ctx.patient.birthDate}` : null].filter(Boolean);
  banner.replaceChildren(el("strong", { className: "patient-name", text: ctx.patient.name || "Unnamed patient" }), el("span", { text: parts.join(" · ") }));
  banner.hidden = false;
}

function renderChartStatus(chart) {
  const box = $("#chart-status");
  const bits = [];
  if (chart?.fetchedAt) {
    const when = new Date(chart.fetchedAt);
    bits.push(`Chart read at ${when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`);
  }
  const notGranted = chart?.notGranted ?? [];
  if (notGranted.length) bits.push(`not permitted by this launch: ${notGranted.join(", ")}`);
  const children = [el("span", { text: bits.join(" · ") })];
  const problems = chart?.problems ?? [];
  if (problems.length) {
    const skipped = problems.reduce((n, p) => n + (p.count ?? 1), 0);
    children.push(
      el(
        "details",
        { className: "chart-problems" },
        el("summary", { text: `${plural(skipped, "item")} skipped` }),
        el("ul", {}, ...problems.map((p) => el("li", { text: `${p.resourceType}: ${p.detail}${(p.count ?? 1) > 1 ? ` (${p.count})` : ""}` }))),
      ),
    );
  }
  box.replaceChildren(...children);
}

function renderNotEnabled(items) {
  const box = $("#not-enabled");
  if (!items?.length) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  box.replaceChildren(
    el("p", { className: "not-enabled-title", text: "Not enabled for you here" }),
    el("ul", {}, ...items.map((item) => el("li", {}, el("span", { className: "not-enabled-kind", text: item.title || item.kind }), item.reason ? ` — ${item.reason}` : ""))),
  );
  box.hidden = false;
}

function renderCounts() {
  const pending = pendingIndexes().length;
  const total = state.suggestions.length;
  $("#pending-count").textContent = total ? `${pending} of ${total} to decide` : "";
  const acceptAll = $("#accept-all");
  acceptAll.hidden = total === 0;
  acceptAll.disabled = pending === 0;
  $("#accept-all-count").textContent = String(pending);
  note.update(state.suggestions);
}

// -- cards and focus ---------------------------------------------------------------------

function handlersFor(index) {
  const id = () => state.suggestions[index].id;
  return {
    onAccept: () => decideAndMove(index, "accept"),
    onEdit: () => openPanel(index, "edit"),
    onReject: () => openPanel(index, "reject"),
    onFlag: () => openPanel(index, "flag"),
    onCancel: () => cancelPanel(cards()[index]),
    onSubmitEdit: (text) => submitEdit(index, text),
    onSubmitReject: (reason, comment) => decideAndMove(index, "reject", { reason, comment: comment.trim() || undefined }),
    onSubmitFlag: (comment) => decideAndMove(index, "flag", { reason: "unsafe", comment: comment.trim() || undefined }),
    onToggleDiff: () => {
      countAction(id());
      toggleDiff(cards()[index]);
    },
    onAbout: () => openAbout(index),
    onAction: () => countAction(id()),
  };
}

function setCurrent(index) {
  state.current = index;
  cards().forEach((card, i) => card.classList.toggle("current", i === index));
}

function focusCard(index) {
  const all = cards();
  if (!all.length) return;
  const target = Math.max(0, Math.min(index, all.length - 1));
  setCurrent(target);
  all[target].focus();
  all[target].scrollIntoView({ block: "nearest" });
}

function focusAfterDecision(index) {
  const pending = pendingIndexes();
  const next = pending.find((i) => i > index) ?? pending[0];
  if (next !== undefined) focusCard(next);
  else if (!$("#save-note").hidden && !$("#save-note").disabled) $("#save-note").focus();
  else focusCard(index);
}

function closePanels(card, refocus) {
  if (!card) return;
  for (const panel of card.querySelectorAll(".panel")) panel.hidden = true;
  card.classList.remove("deciding");
  if (refocus) card.focus();
}

/** Cancel the open panel: what was typed in it is discarded, here and in the kept drafts. */
function cancelPanel(card) {
  if (!card) return;
  const suggestion = state.suggestions[Number(card.dataset.index)];
  if (suggestion) drafts.forget(suggestion.id);
  closePanels(card, true);
}

function openPanel(index, kind) {
  const card = cards()[index];
  if (!card) return;
  setCurrent(index);
  countAction(state.suggestions[index].id);
  closePanels(card, false);
  drafts.forget(state.suggestions[index].id); // a panel opened afresh starts afresh
  const panel = card.querySelector(`.card-${kind}`);
  delete panel.dataset.reasonCounted;
  panel.querySelector(".kept-notice").hidden = true;
  panel.hidden = false;
  card.classList.add("deciding");
  if (kind === "edit") {
    const textarea = panel.querySelector("textarea");
    const suggestion = state.suggestions[index];
    textarea.value = suggestion.decision?.action === "edit" ? suggestion.decision.text : suggestion.text;
    textarea.focus();
    textarea.setSelectionRange(textarea.value.length, textarea.value.length);
  } else if (kind === "reject") {
    (panel.querySelector("input[type=radio]:checked") ?? panel.querySelector("input[type=radio]")).focus();
  } else {
    panel.querySelector("textarea").focus();
  }
  panel.scrollIntoView({ block: "nearest" });
}

/** Open or close the current card; the keys keep acting on it. */
function toggleCurrent() {
  const card = cards()[state.current];
  if (!card) return;
  countAction(state.suggestions[state.current].id);
  const open = toggleCard(card);
  card.focus();
  card.scrollIntoView({ block: "nearest" });
  announce(`${open ? "Opened" : "Closed"}: ${state.suggestions[state.current].title}.`);
}

/** Keep what the clinician types in a card's panel until it is submitted (drafts.js). */
function keepPanelText(event) {
  const panel = event.target instanceof Element ? event.target.closest(".panel") : null;
  const card = panel?.closest("#suggestion-list > .card");
  const suggestion = card ? state.suggestions[Number(card.dataset.index)] : null;
  if (!panel || panel.hidden || !suggestion) return;
  const kind = ["edit", "reject", "flag"].find((k) => panel.classList.contains(`card-${k}`));
  const text = panel.querySelector("textarea").value;
  const opened = kind === "edit" ? (suggestion.decision?.action === "edit" ? suggestion.decision.text : suggestion.text) : "";
  if (text.trim() === opened.trim()) {
    drafts.forget(suggestion.id); // nothing typed that would be lost
    return;
  }
  const reason = panel.querySelector("input[type=radio]:checked")?.value ?? null;
  drafts.keep(suggestion.id, { panel: kind, text, reason, kind: suggestion.kind, title: suggestion.title });
}

/** Is some open panel holding text the clinician has not submitted? */
function holdsUnsavedText() {
  return cards().some((card) => {
    const suggestion = state.suggestions[Number(card.dataset.index)];
    const panel = [...card.querySelectorAll(".panel")].find((p) => !p.hidden);
    if (!panel || !suggestion) return false;
    const text = panel.querySelector("textarea").value.trim();
    const opened = panel.classList.contains("card-edit") ? (suggestion.decision?.action === "edit" ? suggestion.decision.text : suggestion.text) : "";
    return text !== opened.trim();
  });
}

/** Where the browser denies the frame storage, a reload or a new launch asks first. */
function guardUnload(event) {
  if (!$("#signed-out").hidden || drafts.available() || !holdsUnsavedText()) return;
  event.preventDefault();
  event.returnValue = ""; // older browsers need it set to show the prompt
}

/** Reopen the panels that held unsubmitted text before a reload; how many were reopened. */
function restoreKept() {
  drafts.adopt(state.suggestions);
  let first = null;
  let count = 0;
  state.suggestions.forEach((suggestion, index) => {
    const entry = drafts.kept(suggestion.id);
    const card = cards()[index];
    if (!entry || !card) return;
    toggleCard(card, true);
    const panel = card.querySelector(`.card-${entry.panel}`);
    panel.hidden = false;
    card.classList.add("deciding");
    panel.querySelector("textarea").value = entry.text;
    if (entry.panel === "reject" && entry.reason) {
      const radio = [...panel.querySelectorAll("input[type=radio]")].find((r) => r.value === entry.reason);
      if (radio) radio.checked = true;
    }
    const notice = panel.querySelector(".kept-notice");
    notice.textContent = entry.panel === "edit" ? "Your unsaved edit was kept." : "Your unsaved comment was kept.";
    notice.hidden = false;
    first ??= index;
    count += 1;
  });
  if (first !== null) {
    setCurrent(first);
    cards()[first].scrollIntoView({ block: "nearest" });
  }
  return count;
}

function setCardMessage(card, text) {
  card.querySelector(".card-message").textContent = text;
}

// -- decisions ---------------------------------------------------------------------------

/**
 * Record one decision through the feedback endpoint. `actions` is what the clinician spent
 * on this suggestion: the panels and sources opened on it, plus this deciding action.
 */
async function decide(index, action, extra = {}) {
  const suggestion = state.suggestions[index];
  const card = cards()[index];
  if (!suggestion || state.inFlight.has(suggestion.id)) return false;
  if (action === "accept" && suggestion.decision?.action === "accept") {
    announce(`Already accepted: ${suggestion.title}.`);
    return false;
  }
  countAction(suggestion.id);
  state.inFlight.add(suggestion.id);
  card.setAttribute("aria-busy", "true");
  try {
    await api.feedback(suggestion.id, { action, actions: state.actions.get(suggestion.id), ...extra });
    suggestion.decision = {
      action,
      text: action === "edit" ? extra.text : action === "accept" ? suggestion.text : null,
      reason: extra.reason ?? null,
      decidedAt: new Date().toISOString(),
    };
    drafts.forget(suggestion.id); // submitted: nothing half-written remains
    closePanels(card, false);
    updateCard(card, suggestion, handlersFor(index));
    if (action === "edit") toggleCard(card, true); // the edited text and "show changes"
    setCardMessage(card, "");
    renderCounts();
    return true;
  } catch (err) {
    setCardMessage(card, `Not recorded: ${messageOf(err)}`);
    // The AI draft replaced this card a moment ago: show the new one.
    if (err instanceof ApiError && err.status === 404 && state.pending.length) schedulePoll(0);
    return false;
  } finally {
    state.inFlight.delete(suggestion.id);
    card.setAttribute("aria-busy", "false");
  }
}

async function decideAndMove(index, action, extra = {}) {
  const ok = await decide(index, action, extra);
  if (!ok) return;
  const suggestion = state.suggestions[index];
  const left = pendingIndexes().length;
  announce(`${decisionLabel(suggestion.decision)}: ${suggestion.title}. ${left ? `${left} left to decide.` : "All decided."}`);
  focusAfterDecision(index);
}

async function submitEdit(index, text) {
  const suggestion = state.suggestions[index];
  const card = cards()[index];
  if (!text.trim()) {
    setCardMessage(card, "The edited text is empty: write the text, or reject the suggestion.");
    card.querySelector(".card-edit textarea").focus();
    return;
  }
  if (suggestion.decision?.action === "edit" && text.trim() === suggestion.decision.text.trim()) {
    closePanels(card, true);
    announce("No change to the edited text.");
    return;
  }
  // Unchanged text is an acceptance, not an edit: the metrics should say so.
  if (text.trim() === suggestion.text.trim()) return decideAndMove(index, "accept");
  return decideAndMove(index, "edit", { text });
}

/**
 * Accept every suggestion still pending: one action for the clinician, one accept decision
 * per suggestion through the feedback endpoint. Each records the actions spent on it
 * (panels or sources opened before) plus this one.
 */
async function acceptAll() {
  const pending = pendingIndexes();
  if (!pending.length) {
    announce("Nothing left to accept.");
    return;
  }
  const button = $("#accept-all");
  button.disabled = true;
  let accepted = 0;
  for (const index of pending) {
    if (await decide(index, "accept")) accepted += 1;
  }
  renderCounts();
  if (accepted === pending.length) announce(`Accepted ${plural(accepted, "suggestion")}.`);
  else announce(`Accepted ${accepted} of ${pending.length}; the others could not be recorded. Try again.`);
  const save = $("#save-note");
  if (!save.hidden && !save.disabled) save.focus();
  else focusAfterDecision(pending[0]);
}

// -- loading -----------------------------------------------------------------------------

function showLoading(text) {
  state.loading = true;
  $("#main").setAttribute("aria-busy", "true");
  $("#loading").hidden = false;
  $("#loading-text").textContent = text;
  $("#load-error").hidden = true;
  $("#empty").hidden = true;
  $("#suggestion-list").replaceChildren();
  $("#changes").hidden = true;
  $("#accept-all").hidden = true;
  $("#pending-count").textContent = "";
}

function showError(err) {
  state.loading = false;
  $("#main").setAttribute("aria-busy", "false");
  $("#loading").hidden = true;
  $("#load-error-message").textContent = messageOf(err);
  $("#load-error").hidden = false;
  $("#retry").focus();
}

/**
 * One label before the assessment-and-plan cards ("Assessment and plan · 15 problems"):
 * their closed lines start with the problem, not the card's title. Hidden from screen
 * readers, for whom each card's name is its full title.
 */
function withDividers(cardNodes) {
  const out = [];
  const plans = cardNodes.filter((c) => c.dataset.kind === "assessment_plan").length;
  let seen = false;
  for (const card of cardNodes) {
    if (card.dataset.kind === "assessment_plan" && !seen) {
      seen = true;
      out.push(el("li", { className: "kind-divider", text: `Assessment and plan · ${plural(plans, "problem")}`, attrs: { "aria-hidden": "true" } }));
    }
    out.push(card);
  }
  return out;
}

/** Is the clinician in the middle of something on a card (a panel open, a decision on its way)? */
function busyWithACard() {
  return state.inFlight.size > 0 || cards().some((card) => card.classList.contains("deciding"));
}

function schedulePoll(delay = POLL_MS, left = POLL_LIMIT) {
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
  if (!state.pending.length || left <= 0) return;
  state.pollTimer = setTimeout(() => poll(left - 1), delay);
}

/**
 * Ask whether AI drafts arrived; when some did, read the suggestions again and put the new
 * cards in place of the rule-based ones that stood in (never while a card is being decided).
 */
async function poll(left) {
  if (state.loading) return schedulePoll(POLL_MS, left);
  try {
    const { data } = await api.pending();
    const still = new Set((data.pending ?? []).map((p) => p.kind));
    const arrived = state.pending.filter((p) => !still.has(p.kind));
    if (!arrived.length) return schedulePoll(POLL_MS, left);
    if (busyWithACard()) return schedulePoll(POLL_MS, left);
    const focusedId = document.activeElement?.closest?.("#suggestion-list > .card") ? state.suggestions[state.current]?.id : null;
    const focusedKind = state.suggestions[state.current]?.kind;
    const { data: fresh } = await api.suggestions();
    if (busyWithACard()) return schedulePoll(POLL_MS, left); // started deciding meanwhile
    renderSuggestions(fresh, { quiet: true });
    announce(`AI draft arrived: ${arrived.map((p) => p.title).join(", ")}.`);
    if (focusedId) {
      const same = state.suggestions.findIndex((s) => s.id === focusedId);
      const sameKind = state.suggestions.findIndex((s) => s.kind === focusedKind);
      focusCard(same >= 0 ? same : Math.max(0, sameKind));
    }
  } catch (err) {
    schedulePoll(POLL_MS * 5, left); // the rules' drafts stand; try again a little later
  }
}

function renderSuggestions(payload, { quiet = false } = {}) {
  state.loading = false;
  state.suggestions = payload.suggestions ?? [];
  state.current = Math.min(state.current, Math.max(0, state.suggestions.length - 1));
  const list = $("#suggestion-list");
  // Cards the clinician opened stay open when the list is drawn again (an AI draft arrived).
  const open = new Set(cards().filter((c) => c.classList.contains("expanded")).map((c) => c.dataset.id));
  list.replaceChildren(...withDividers(state.suggestions.map((s, i) => createCard(s, i, handlersFor(i)))));
  for (const card of cards()) if (open.has(card.dataset.id)) toggleCard(card, true);
  renderChanges($("#changes"), payload.changes, { onOpen: () => {} });
  cards().forEach((card, i) => card.addEventListener("focusin", () => setCurrent(i)));
  renderChartStatus(payload.chart);
  renderNotEnabled(payload.notEnabled);
  $("#loading").hidden = true;
  $("#empty").hidden = state.suggestions.length > 0;
  $("#main").setAttribute("aria-busy", "false");
  renderCounts();
  setCurrent(state.current);
  state.pending = payload.pending ?? [];
  schedulePoll();
  if (quiet) return;
  const restored = restoreKept();
  const pending = pendingIndexes().length;
  const keptText = restored ? ` Your unsaved text was kept on ${plural(restored, "card")}.` : "";
  announce(state.suggestions.length ? `${plural(state.suggestions.length, "suggestion")}, ${pending} to decide.${keptText}` : "No suggestions for this chart.");
}

async function load(refresh = false) {
  if (state.loading) return;
  $("#refresh-confirm").hidden = true;
  const hadFocus = document.activeElement && document.activeElement !== document.body;
  showLoading(refresh ? "Reading the chart again…" : "Reading the chart…");
  try {
    if (!state.context) {
      state.context = (await api.context()).data;
      drafts.init(state.context);
      renderBanner(state.context);
      renderChartStatus(state.context.chart);
      await note.init(state.context);
    }
    const { data } = refresh ? await api.refresh() : await api.suggestions();
    if (refresh) note.resetSaved();
    renderSuggestions(data);
    // What changed since the visit's draft is known once this launch's suggestions are.
    note.refreshDelivery();
    if (refresh && hadFocus) focusCard(0);
  } catch (err) {
    showError(err);
  }
}

function requestRefresh() {
  const confirm = $("#refresh-confirm");
  if (state.suggestions.some((s) => s.decision) && confirm.hidden) {
    confirm.hidden = false;
    $("#refresh-anyway").focus();
    return;
  }
  load(true);
}

// -- the session -------------------------------------------------------------------------

/** End this launch (POST /logout): here, and at the EHR where it can revoke the tokens. */
async function signOut() {
  const button = $("#sign-out");
  button.disabled = true;
  $("#session-status").textContent = "Signing out…";
  try {
    const { data } = await api.logout();
    drafts.forgetAll();
    clearTimeout(state.pollTimer);
    state.pending = [];
    $("#app").hidden = true;
    $("#signed-out-detail").textContent = data?.revoked
      ? "The app's access to this chart has ended, here and at the EHR."
      : "The app's access to this chart has ended.";
    const done = $("#signed-out");
    done.hidden = false;
    done.focus();
    announce("Signed out.");
  } catch (err) {
    button.disabled = false;
    $("#session-status").textContent = `Not signed out: ${messageOf(err)}`;
  }
}

/** A window without cookies: its <link> brought no SMART style, so fetch it with the token. */
async function applyWindowStyle() {
  try {
    const css = await api.styleSheet();
    if (!css) return;
    const sheet = new CSSStyleSheet();
    await sheet.replace(css);
    document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
  } catch (err) {
    // The app's own style stands; the EHR's colours are a nicety.
  }
}

// -- keys --------------------------------------------------------------------------------

/** About this suggestion: the source attributes of the engine that drafted the card. */
function openAbout(index) {
  const suggestion = state.suggestions[index];
  if (!suggestion) return;
  setCurrent(index);
  showAbout(suggestion.kind, cards()[index]);
}

function openHelp() {
  const dialog = $("#help");
  if (!dialog.open) dialog.showModal();
}

function togglePreview() {
  const preview = $("#note-preview");
  preview.open = !preview.open;
  if (preview.open) $("#note-text").focus();
}

function inCard(target) {
  return target instanceof Element && Boolean(target.closest("#suggestion-list > .card"));
}

function run(command, target) {
  const none = !state.suggestions.length;
  switch (command) {
    case "next":
      if (!none) focusCard(inCard(target) ? state.current + 1 : state.current);
      break;
    case "previous":
      if (!none) focusCard(inCard(target) ? state.current - 1 : state.current);
      break;
    case "accept":
      if (!none) decideAndMove(state.current, "accept");
      break;
    case "edit":
    case "reject":
    case "flag":
      if (!none) openPanel(state.current, command);
      break;
    case "diff":
      if (!none) handlersFor(state.current).onToggleDiff();
      break;
    case "toggle":
      if (!none) toggleCurrent();
      break;
    case "acceptAll":
      acceptAll();
      break;
    case "preview":
      togglePreview();
      break;
    case "save":
      note.save(state.suggestions, announce);
      break;
    case "refresh":
      requestRefresh();
      break;
    case "help":
      openHelp();
      break;
    case "about":
      if (!none) openAbout(state.current);
      break;
    default:
      break;
  }
}

function onEscape(target) {
  const panel = target instanceof Element ? target.closest(".panel") : null;
  if (panel) {
    cancelPanel(panel.closest(".card"));
    return true;
  }
  const card = cards()[state.current];
  if (card && closeSources(card)) {
    card.focus();
    return true;
  }
  if (!$("#refresh-confirm").hidden) {
    $("#refresh-confirm").hidden = true;
    $("#refresh").focus();
    return true;
  }
  return false;
}

function onKey(event) {
  if (event.defaultPrevented || event.isComposing) return;
  const target = event.target;
  if ($("#help").open || $("#about").open) return; // a dialog closes itself on Esc
  if (!$("#signed-out").hidden) return; // nothing left to act on
  if (event.key === "Escape") {
    if (onEscape(target)) event.preventDefault();
    return;
  }
  const panel = target instanceof Element ? target.closest(".panel") : null;
  if (panel) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      panel.requestSubmit();
    }
    return;
  }
  if (isTyping(target)) return;
  if (event.key === "Enter" && target instanceof Element && target.matches("#suggestion-list > .card")) {
    // Enter on the card itself (J/K put focus there) opens or closes it, like its heading.
    event.preventDefault();
    toggleCurrent();
    return;
  }
  const command = commandFor(event);
  if (!command) return;
  // Arrow keys keep their usual job (scrolling, moving in a control) outside the cards.
  if (event.key.startsWith("Arrow") && !(inCard(target) || target === document.body)) return;
  event.preventDefault();
  run(command, target);
}

// -- start -------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#help-rows").replaceChildren(...helpRows());
  $("#help-button").addEventListener("click", openHelp);
  $("#help-close").addEventListener("click", () => $("#help").close());
  $("#about-close").addEventListener("click", () => $("#about").close());
  $("#save-note").addEventListener("click", () => note.save(state.suggestions, announce));
  $("#refresh").addEventListener("click", requestRefresh);
  $("#refresh-anyway").addEventListener("click", () => load(true));
  $("#refresh-cancel").addEventListener("click", () => {
    $("#refresh-confirm").hidden = true;
    $("#refresh").focus();
  });
  $("#empty-refresh").addEventListener("click", () => load(true));
  $("#retry").addEventListener("click", () => load(false));
  $("#accept-all").addEventListener("click", acceptAll);
  $("#sign-out").addEventListener("click", signOut);
  document.addEventListener("keydown", onKey);
  $("#suggestion-list").addEventListener("input", keepPanelText);
  $("#suggestion-list").addEventListener("change", keepPanelText);
  window.addEventListener("beforeunload", guardUnload);
  if (usesWindowToken()) applyWindowStyle();
  load();
});

// The clinician sidebar: suggestions with their sources, one decision each, then the note.
// Chart data is untrusted: it is only ever set with textContent, never as HTML.

import { api, ApiError } from "./api.js";

const $ = (selector, root = document) => root.querySelector(selector);

const state = {
  context: null,
  suggestions: [],
  focused: 0,
  shownAt: new Map(), // suggestion id -> performance.now() when first rendered
  actions: new Map(), // suggestion id -> clicks/keys spent on it
};

const ACTION_LABEL = { accept: "Accepted", edit: "Edited", reject: "Rejected", flag: "Flagged for review" };

function countAction(id) {
  state.actions.set(id, (state.actions.get(id) ?? 0) + 1);
}

function setStatus(el, text, kind = "") {
  el.textContent = text;
  el.dataset.kind = kind;
}

function renderBanner(ctx) {
  const banner = $("#patient-banner");
  if (!ctx.needPatientBanner) {
    banner.hidden = true;
    return;
  }
  banner.replaceChildren();
  const name = document.createElement("strong");
  name.textContent = ctx.patient.name || "Unnamed patient";
  const details = document.createElement("span");
  const parts = [ctx.patient.gender, ctx.patient.birthDate ? `born ${ctx.patient.birthDate}` : null].filter(Boolean);
  details.textContent = parts.join(" · ");
  banner.append(name, details);
  banner.hidden = false;
}

function renderChartStatus(chart) {
  const bits = [];
  if (chart?.fetchedAt) bits.push(`Chart read ${new Date(chart.fetchedAt).toLocaleTimeString()}`);
  const skipped = (chart?.problems ?? []).reduce((n, p) => n + (p.count ?? 1), 0);
  if (skipped) bits.push(`${skipped} item(s) could not be read`);
  if ((chart?.notGranted ?? []).length) bits.push(`not permitted: ${chart.notGranted.join(", ")}`);
  const el = $("#chart-status");
  el.textContent = bits.join(" · ");
  el.title = (chart?.problems ?? []).map((p) => p.detail).join("\n");
}

function engineLabel(engine) {
  const kind = engine.ruleBased ? "Rule-based" : "AI";
  return `${kind} · ${engine.name} ${engine.version}`;
}

function renderStatement(statement) {
  const li = document.createElement("li");
  li.className = "statement";
  if (statement.verified === false) li.classList.add("unverified");
  const text = document.createElement("span");
  text.className = "statement-text";
  text.textContent = statement.text;
  li.append(text);
  if (statement.verified === false) {
    const warn = document.createElement("span");
    warn.className = "badge warn";
    warn.textContent = "Unverified";
    warn.title = (statement.issues ?? []).join("; ");
    li.append(" ", warn);
  }
  const cites = document.createElement("span");
  cites.className = "citations";
  for (const citation of statement.citations ?? []) {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "citation";
    chip.textContent = citation.reference.split("/")[0];
    chip.setAttribute("aria-expanded", "false");
    chip.title = citation.display;
    const detail = document.createElement("span");
    detail.className = "citation-detail";
    detail.hidden = true;
    detail.textContent = `${citation.display} (${citation.reference})`;
    chip.addEventListener("click", () => {
      detail.hidden = !detail.hidden;
      chip.setAttribute("aria-expanded", String(!detail.hidden));
    });
    cites.append(chip, detail);
  }
  li.append(" ", cites);
  return li;
}

function renderDecision(card, suggestion) {
  const decision = suggestion.decision;
  card.dataset.decision = decision?.action ?? "";
  $(".decision", card).textContent = decision ? ACTION_LABEL[decision.action] ?? decision.action : "";
}

function renderSuggestion(suggestion, index) {
  const card = $("#suggestion-template").content.firstElementChild.cloneNode(true);
  card.dataset.id = suggestion.id;
  card.dataset.index = String(index);
  card.id = `suggestion-${index}`;
  $(".card-title", card).textContent = suggestion.title;
  $(".engine", card).textContent = engineLabel(suggestion.engine);
  if (suggestion.engine.fallbackReason) $(".engine", card).title = suggestion.engine.fallbackReason;
  const list = $(".statements", card);
  for (const statement of suggestion.statements ?? []) list.append(renderStatement(statement));
  $("textarea", card).value = suggestion.decision?.text ?? suggestion.text;
  $(".accept", card).addEventListener("click", () => decide(index, "accept"));
  $(".edit", card).addEventListener("click", () => openEdit(index));
  $(".reject", card).addEventListener("click", () => openReject(index));
  $(".flag", card).addEventListener("click", () => decide(index, "flag", { reason: "unsafe" }));
  $(".save-edit", card).addEventListener("click", () => saveEdit(index));
  $(".cancel-edit", card).addEventListener("click", () => closePanels(card));
  $(".confirm-reject", card).addEventListener("click", () => confirmReject(index));
  $(".cancel-reject", card).addEventListener("click", () => closePanels(card));
  card.addEventListener("focusin", () => focusCard(index, false));
  renderDecision(card, suggestion);
  return card;
}

function cards() {
  return [...document.querySelectorAll("#suggestion-list > .card")];
}

function focusCard(index, move = true) {
  const all = cards();
  if (!all.length) return;
  state.focused = Math.max(0, Math.min(index, all.length - 1));
  all.forEach((c, i) => c.classList.toggle("focused", i === state.focused));
  if (move) all[state.focused].focus();
}

function closePanels(card) {
  $(".card-edit", card).hidden = true;
  $(".card-reject", card).hidden = true;
  card.focus();
}

function openEdit(index) {
  const card = cards()[index];
  countAction(card.dataset.id);
  closePanels(card);
  $(".card-edit", card).hidden = false;
  $("textarea", card).focus();
}

function openReject(index) {
  const card = cards()[index];
  countAction(card.dataset.id);
  closePanels(card);
  $(".card-reject", card).hidden = false;
  $(".reject-reason", card).focus();
}

async function saveEdit(index) {
  const card = cards()[index];
  await decide(index, "edit", { text: $("textarea", card).value });
}

async function confirmReject(index) {
  const card = cards()[index];
  await decide(index, "reject", {
    reason: $(".reject-reason", card).value,
    comment: $(".reject-comment", card).value || undefined,
  });
}

async function decide(index, action, extra = {}) {
  const suggestion = state.suggestions[index];
  const card = cards()[index];
  countAction(suggestion.id);
  try {
    await api.feedback(suggestion.id, { action, actions: state.actions.get(suggestion.id), ...extra });
    suggestion.decision = { action, text: action === "edit" ? extra.text : null };
    renderDecision(card, suggestion);
    closePanels(card);
    updateNotePreview();
    if (index + 1 < state.suggestions.length) focusCard(index + 1);
  } catch (err) {
    setStatus($(".decision", card), messageOf(err), "error");
  }
}

function noteSections() {
  return state.suggestions
    .filter((s) => s.decision && (s.decision.action === "accept" || s.decision.action === "edit"))
    .map((s) => `${s.title}\n${(s.decision.action === "edit" ? s.decision.text : s.text).trim()}`);
}

function updateNotePreview() {
  const sections = noteSections();
  $("#note-text").textContent = sections.join("\n\n");
  $("#note-count").textContent = `${sections.length} section${sections.length === 1 ? "" : "s"}`;
  $("#save-note").disabled = sections.length === 0 || state.context?.canWriteNotes === false;
}

async function saveNote() {
  const button = $("#save-note");
  if (button.disabled) return;
  button.disabled = true;
  setStatus($("#save-status"), "Saving the note to the chart…", "busy");
  try {
    const { status, data } = await api.saveNote();
    if (status === 202) {
      setStatus($("#save-status"), "Saved here; the EHR did not answer, the app will retry.", "pending");
    } else {
      setStatus($("#save-status"), `Saved to the chart as a draft for you to sign (${data.documentReference}).`, "ok");
    }
  } catch (err) {
    setStatus($("#save-status"), messageOf(err), "error");
  } finally {
    updateNotePreview();
  }
}

function messageOf(err) {
  if (err instanceof ApiError) return err.message;
  return "Something went wrong. Try again.";
}

function renderSuggestions(payload) {
  state.suggestions = payload.suggestions;
  const list = $("#suggestion-list");
  list.replaceChildren(...state.suggestions.map(renderSuggestion));
  const now = performance.now();
  for (const s of state.suggestions) if (!state.shownAt.has(s.id)) state.shownAt.set(s.id, now);
  renderChartStatus(payload.chart);
  $("#loading").hidden = state.suggestions.length > 0;
  if (!state.suggestions.length) $("#loading").textContent = "No suggestions for this chart.";
  $("#main").setAttribute("aria-busy", "false");
  updateNotePreview();
  focusCard(0, false);
}

async function load(refresh = false) {
  $("#main").setAttribute("aria-busy", "true");
  $("#loading").hidden = false;
  $("#loading").textContent = refresh ? "Reading the chart again…" : "Reading the chart…";
  try {
    if (!state.context) {
      state.context = (await api.context()).data;
      renderBanner(state.context);
      if (!state.context.canWriteNotes) {
        setStatus($("#save-status"), "This app was not given permission to write notes to the chart.", "warn");
      }
    }
    const { data } = refresh ? await api.refresh() : await api.suggestions();
    renderSuggestions(data);
  } catch (err) {
    $("#loading").hidden = false;
    setStatus($("#loading"), messageOf(err), "error");
    $("#main").setAttribute("aria-busy", "false");
  }
}

function onKey(event) {
  const target = event.target;
  if (target instanceof HTMLTextAreaElement || target instanceof HTMLInputElement || target instanceof HTMLSelectElement) {
    if (event.key === "Escape") closePanels(target.closest(".card"));
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && target instanceof HTMLTextAreaElement) {
      event.preventDefault();
      saveEdit(state.focused);
    }
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  const handlers = {
    j: () => focusCard(state.focused + 1),
    arrowdown: () => focusCard(state.focused + 1),
    k: () => focusCard(state.focused - 1),
    arrowup: () => focusCard(state.focused - 1),
    a: () => decide(state.focused, "accept"),
    e: () => openEdit(state.focused),
    r: () => openReject(state.focused),
    f: () => decide(state.focused, "flag", { reason: "unsafe" }),
    s: () => saveNote(),
    u: () => load(true),
  };
  const handler = handlers[key];
  if (handler && (state.suggestions.length || key === "s" || key === "u")) {
    event.preventDefault();
    handler();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#save-note").addEventListener("click", saveNote);
  $("#refresh").addEventListener("click", () => load(true));
  document.addEventListener("keydown", onKey);
  load();
});

// Citations: each opens its source in place (what, value and unit, date, code, status),
// read from the app's copy of the chart for this launch (GET /api/resources/Type/id).

import { api, ApiError } from "./api.js";
import { el, uniqueId } from "./dom.js";

const TYPE_LABEL = {
  Observation: "Observation",
  Condition: "Condition",
  MedicationRequest: "Medication",
  Medication: "Medication",
  AllergyIntolerance: "Allergy",
  Procedure: "Procedure",
  Immunization: "Immunization",
  DocumentReference: "Document",
  Encounter: "Encounter",
  Patient: "Patient",
};

/** Chip labels where space is short (the summary): the full label stays in aria-label. */
const SHORT_LABEL = {
  Observation: "Obs",
  Condition: "Dx",
  MedicationRequest: "Rx",
  Medication: "Rx",
  AllergyIntolerance: "Allergy",
  Procedure: "Proc",
  Immunization: "Imm",
  DocumentReference: "Doc",
  Encounter: "Visit",
  Patient: "Patient",
};

const summaries = new Map(); // reference -> Promise of the summary

function typeOf(reference) {
  const parts = String(reference).split("/_history/")[0].split("/");
  return parts.at(-2) ?? "";
}

function loadSummary(reference) {
  if (!summaries.has(reference)) {
    const pending = api.resource(reference).then(({ data }) => data.resource);
    // A failure is not kept: the next open asks again.
    pending.catch(() => summaries.delete(reference));
    summaries.set(reference, pending);
  }
  return summaries.get(reference);
}

function numberText(value, unit) {
  if (value === null || value === undefined) return null;
  return unit ? `${value} ${unit}` : String(value);
}

function row(label, ...value) {
  if (!value.length || value.every((v) => v === null || v === undefined || v === "")) return null;
  return el("div", { className: "source-row" }, el("dt", { text: label }), el("dd", {}, ...value));
}

function codeLine(code) {
  const systemCode = code.system ? `${code.system}|${code.code}` : code.code;
  return el("span", { className: "source-code" }, el("code", { text: systemCode }), code.display ? ` ${code.display}` : null);
}

/** The source's fields as a definition list; every value is set as text. */
export function renderSummary(summary) {
  const value = summary.valueText ?? numberText(summary.value, summary.unit);
  const rows = [
    row("Value", value),
    ...(summary.components ?? []).map((c) => row(c.name ?? "Component", c.valueText ?? numberText(c.value, c.unit))),
    row("Date", summary.date),
    row("Status", summary.status),
    (summary.codes ?? []).length ? row((summary.codes.length > 1 ? "Codes" : "Code"), ...summary.codes.flatMap((c, i) => (i ? [el("br"), codeLine(c)] : [codeLine(c)]))) : null,
    ...(summary.details ?? []).map((d) => row(d.label, d.value)),
  ];
  return el(
    "div",
    { className: "source-body" },
    el("p", { className: "source-title", text: summary.title ?? summary.reference }),
    el("dl", { className: "source-fields" }, ...rows),
    el("p", { className: "source-ref", text: summary.reference }),
  );
}

async function fill(panel, citation) {
  panel.replaceChildren(el("p", { className: "source-loading", text: "Opening the source…" }));
  panel.setAttribute("aria-busy", "true");
  try {
    const summary = await loadSummary(citation.reference);
    panel.replaceChildren(renderSummary(summary));
  } catch (err) {
    const message = err instanceof ApiError ? err.message : "The source could not be opened.";
    const retry = el("button", { className: "link-button", text: "Try again", attrs: { type: "button" }, onClick: () => fill(panel, citation) });
    panel.replaceChildren(el("p", { className: "source-error", text: `${message} ` }, retry));
  } finally {
    panel.setAttribute("aria-busy", "false");
  }
}

/**
 * Citation chips with their source panels, for one statement (or a whole suggestion).
 * `onOpen()` is told of each opening (an action the clinician spent on the suggestion);
 * `compact` labels the chips short ("Obs", "Rx").
 */
export function renderCitations(citations, { onOpen, compact = false } = {}) {
  const wrap = el("div", { className: "citations" });
  const chips = el("div", { className: "citation-chips" });
  const panels = el("div", { className: "citation-panels" });
  for (const citation of citations ?? []) {
    const panelId = uniqueId("source");
    const label = TYPE_LABEL[typeOf(citation.reference)] ?? typeOf(citation.reference) ?? "Source";
    const chip = el(
      "button",
      {
        className: "citation",
        attrs: {
          type: "button",
          "aria-expanded": "false",
          "aria-controls": panelId,
          "aria-label": `Source: ${citation.display} (${label})`,
        },
      },
      compact ? SHORT_LABEL[typeOf(citation.reference)] ?? label : label,
    );
    const panel = el("section", { className: "source", hidden: true, attrs: { id: panelId, "aria-label": `Source: ${citation.display}` } });
    chip.addEventListener("click", () => {
      const opening = panel.hidden;
      panel.hidden = !opening;
      chip.setAttribute("aria-expanded", String(opening));
      if (opening) {
        onOpen?.();
        fill(panel, citation);
      }
    });
    chips.append(chip);
    panels.append(panel);
  }
  wrap.append(chips, panels);
  return wrap;
}

/** Close every open source inside `root`; true if one was open. */
export function closeSources(root) {
  let closed = false;
  for (const chip of root.querySelectorAll('.citation[aria-expanded="true"]')) {
    chip.setAttribute("aria-expanded", "false");
    const panel = root.querySelector(`#${CSS.escape(chip.getAttribute("aria-controls"))}`);
    if (panel) panel.hidden = true;
    closed = true;
  }
  return closed;
}

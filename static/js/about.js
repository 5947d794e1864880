// "About this suggestion": the drafting engine version's source attributes (ONC HTI-1),
// in a modal dialog (Esc closes it, focus returns to the card). Text only, never HTML.

import { api, ApiError } from "./api.js";
import { $, el } from "./dom.js";

/** The attributes shown first, in this order, with the words a clinician reads. */
const LABELS = [
  ["type", "Type of decision support"],
  ["developer", "Developer"],
  ["model", "Model"],
  ["intended_use", "Intended use"],
  ["intended_users", "Intended users"],
  ["intended_patient_population", "Intended patients"],
  ["decision_role", "Decision role"],
  ["cautions", "Cautions"],
  ["out_of_scope_use", "Out-of-scope use"],
  ["output", "Output"],
  ["bibliographic_citation", "Evidence"],
  ["training_data", "Training data"],
  ["validation_on_local_data", "Validation on local data"],
  ["last_update", "Last update"],
];
const USES = "uses_";

function label(key) {
  const known = LABELS.find(([k]) => k === key);
  if (known) return known[1];
  const words = key.replaceAll("_", " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function validationText(value) {
  if (!value || value.status !== "evaluated") return value?.status ?? "not yet evaluated on local data";
  const kinds = (value.kinds ?? []).map((k) => {
    const rate = typeof k.grounding_rate === "number" ? `${Math.round(k.grounding_rate * 100)}% of statements verified` : "grounding not reported";
    return `${k.kind}: ${k.patients ?? "?"} patients, ${rate}`;
  });
  const when = value.ran_at ? ` (run ${String(value.ran_at).slice(0, 10)})` : "";
  return `Evaluated on this site's data${when}. ${kinds.join("; ")}`;
}

function valueText(key, value) {
  if (key === "validation_on_local_data") return validationText(value);
  if (key === "last_update" && typeof value === "string") return value.slice(0, 10);
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (Array.isArray(value)) return value.join(", ");
  if (value && typeof value === "object") return JSON.stringify(value);
  return String(value ?? "");
}

function row(key, value) {
  return [el("dt", { text: label(key) }), el("dd", { text: valueText(key, value) })];
}

function render(payload) {
  const card = payload.card;
  const attributes = card.source_attributes ?? {};
  const first = LABELS.map(([k]) => k).filter((k) => k in attributes);
  const rest = Object.keys(attributes).filter((k) => !first.includes(k) && !k.startsWith(USES));
  const uses = Object.keys(attributes).filter((k) => k.startsWith(USES));
  const words = (k) => k.slice(USES.length).replaceAll("_", " ");
  const used = uses.filter((k) => attributes[k] === true).map(words);
  const unused = uses.filter((k) => attributes[k] !== true).map(words);
  return [
    el("p", { className: "about-engine", text: `${payload.title}: ${payload.engine.name} ${payload.engine.version} · ${card.status}` }),
    el("dl", { className: "about-attributes" }, ...first.flatMap((k) => row(k, attributes[k]))),
    uses.length
      ? el("p", { className: "about-uses", text: `Patient data it uses: ${used.length ? used.join(", ") : "none of those listed"}. Not used: ${unused.length ? unused.join(", ") : "none"}.` })
      : null,
    rest.length
      ? el("details", { className: "about-more" }, el("summary", { text: "All source attributes" }), el("dl", { className: "about-attributes" }, ...rest.flatMap((k) => row(k, attributes[k]))))
      : null,
  ];
}

/** Open the dialog for `kind`; `returnFocus` gets the focus back when it closes. */
export async function showAbout(kind, returnFocus) {
  const dialog = $("#about");
  const body = $("#about-body");
  body.replaceChildren(el("p", { className: "about-loading", text: "Loading…", attrs: { role: "status" } }));
  dialog.addEventListener("close", () => returnFocus?.focus(), { once: true });
  if (!dialog.open) dialog.showModal();
  try {
    const { data } = await api.about(kind);
    body.replaceChildren(...render(data).filter(Boolean));
  } catch (err) {
    body.replaceChildren(el("p", { className: "about-error", attrs: { role: "alert" }, text: err instanceof ApiError ? err.message : "Could not load the details. Try again." }));
  }
  $("#about-close").focus();
}

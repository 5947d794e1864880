// The note: sections in order from the accepted and edited suggestions, a preview, the
// save to the chart, and the note's delivery state afterwards (GET /api/notes).

import { api, ApiError } from "./api.js";
import { $, el, setStatus, plural } from "./dom.js";
import { finalText } from "./cards.js";
import { showPulse } from "./pulse.js";
import { renderVisit } from "./visit.js";

const POLL_MS = 10_000;

const note = {
  canWrite: false,
  saving: false,
  savedText: null, // the text last sent to the chart
  latest: null, // the latest note of this launch, as GET /api/notes lists it
  visit: null, // the visit's saved draft and what changed since (GET /api/notes' `visit`)
  error: null, // the message of a failed save
  timer: null,
};

/** The note's sections as the server assembles them: title, then the (edited) text. */
export function noteText(suggestions) {
  return suggestions
    .filter((s) => s.decision && (s.decision.action === "accept" || s.decision.action === "edit"))
    .map((s) => `${s.title}\n${finalText(s).trim()}`)
    .join("\n\n");
}

function clock(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  return Number.isNaN(when.getTime()) ? "" : when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function renderDelivery() {
  const status = $("#save-status");
  const latest = note.latest;
  if (note.saving) return setStatus(status, "Saving the note to the chart…", "busy");
  if (note.error) return setStatus(status, `Could not be saved to the chart: ${note.error}`, "error");
  if (!latest) {
    if (!note.canWrite) setStatus(status, "This app was not allowed to write notes to this chart: copy the note from the preview.", "warn");
    else setStatus(status, "", "");
    return;
  }
  if (latest.status === "pending") {
    status.replaceChildren(
      el("strong", { text: "Saved here — the EHR did not answer, the app will retry." }),
      el("span", { className: "status-detail", text: ` Checking again every ${POLL_MS / 1000} s${latest.attempts ? ` (${plural(latest.attempts, "attempt")} so far)` : ""}.` }),
    );
    status.dataset.kind = "pending";
  } else if (latest.status === "in_chart") {
    status.replaceChildren(
      el("strong", { text: "In the chart as a draft for you to sign." }),
      el("span", { className: "status-detail", text: ` Saved to the chart at ${clock(latest.updatedAt ?? latest.createdAt)}${latest.documentReference ? ` · ${latest.documentReference}` : ""}.` }),
    );
    status.dataset.kind = "ok";
  } else if (latest.status === "failed") {
    const why = latest.error ?? "the EHR refused the note.";
    setStatus(status, `Could not be saved to the chart: ${why} It is kept here; copy it from the preview or ask IT.`, "error");
  }
}

function schedulePoll() {
  clearTimeout(note.timer);
  if (note.latest?.status !== "pending") return;
  note.timer = setTimeout(async () => {
    try {
      await refreshDelivery();
    } finally {
      schedulePoll();
    }
  }, POLL_MS);
}

/** Ask where the latest note of this visit is (pending, in the chart, failed). */
export async function refreshDelivery() {
  try {
    const { data } = await api.notes();
    const notes = data.notes ?? [];
    note.latest = notes.length ? notes[notes.length - 1] : null;
    note.visit = data.visit ?? null;
  } catch (err) {
    // The next poll tries again; the last known state stays on screen.
    return;
  }
  // A draft saved for this visit in an earlier launch (or another tab) is the saved note:
  // "Save changes" only once the note differs from it.
  const draft = note.visit?.draft;
  if (draft && note.savedText === null && draft.status !== "failed") note.savedText = draft.text;
  renderVisit(note.visit);
  renderDelivery();
  update(currentSuggestions());
}

let currentSuggestions = () => [];

/** Draw the preview and the save button for the current decisions. */
export function update(suggestions) {
  const text = noteText(suggestions);
  const sections = suggestions.filter((s) => s.decision && (s.decision.action === "accept" || s.decision.action === "edit")).length;
  $("#note-text").textContent = text || "Accept or edit a suggestion to start the note.";
  $("#note-text").dataset.empty = text ? "" : "true";
  $("#note-count").textContent = plural(sections, "section");
  const button = $("#save-note");
  button.hidden = !note.canWrite;
  const unchanged = note.savedText !== null && text === note.savedText && note.latest?.status !== "failed";
  button.disabled = note.saving || !text || unchanged;
  const label = $("#save-label");
  const savedLabel = { in_chart: "In the chart", pending: "Saved here, will retry" }[note.latest?.status] ?? "Note saved";
  label.textContent = note.savedText === null ? "Save note to chart" : unchanged ? savedLabel : "Save changes to chart";
  const changed = $("#note-changed");
  changed.hidden = !(note.savedText !== null && text && text !== note.savedText);
}

/** Send the note to the chart; true if the EHR has it or the app will retry. */
export async function save(suggestions, announce) {
  const button = $("#save-note");
  if (!note.canWrite || button.disabled || note.saving) return false;
  const text = noteText(suggestions);
  note.saving = true;
  note.error = null;
  update(suggestions);
  renderDelivery();
  try {
    const { data } = await api.saveNote();
    note.savedText = text;
    note.latest = data.note ?? { status: data.status ?? "in_chart", documentReference: data.documentReference };
    announce(note.latest.status === "pending" ? "Saved here; the app will retry sending it to the chart." : "The note is in the chart as a draft for you to sign.");
    if (data.pulse) showPulse(data.pulse, announce);
    refreshDelivery(); // the visit's draft line: saved now
    return true;
  } catch (err) {
    note.error = err instanceof ApiError ? err.message : "something went wrong. Try again.";
    announce(`The note could not be saved: ${note.error}`);
    return false;
  } finally {
    note.saving = false;
    renderDelivery();
    update(suggestions);
    schedulePoll();
  }
}

/** Set up from the launch context; picks up a note saved earlier in this launch. */
export async function init(context, getSuggestions) {
  note.canWrite = Boolean(context.canWriteNotes);
  currentSuggestions = getSuggestions;
  $("#save-note").hidden = !note.canWrite;
  renderDelivery();
  await refreshDelivery();
  schedulePoll();
}

/** After a refresh the note is assembled again from the suggestions now shown. */
export function resetSaved() {
  note.savedText = null;
}

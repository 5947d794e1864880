// The note: the server composes it from the accepted and edited suggestions (sections,
// no engine labels) and the preview shows exactly that; the save to the chart, and the
// note's delivery state afterwards (GET /api/notes).

import { api, ApiError } from "./api.js";
import { $, el, setStatus, plural } from "./dom.js";
import { showPulse } from "./pulse.js";
import { renderVisit } from "./visit.js";

const POLL_MS = 10_000;

const note = {
  canWrite: false,
  saving: false,
  savedText: null, // the text last sent to the chart
  savedSummary: null, // the after-visit summary's text last sent, if one was
  latest: null, // the latest note of this launch, as GET /api/notes lists it
  visit: null, // the visit's saved draft and what changed since (GET /api/notes' `visit`)
  preview: null, // the server's composition of the note (GET /api/note/preview)
  previewSeq: 0, // the latest preview asked for
  previewDone: 0, // the latest preview answered
  decided: false, // whether any suggestion is accepted or edited (until the preview answers)
  previewError: null,
  summary: null, // the visit's after-visit summary, once saved
  error: null, // the message of a failed save
  timer: null,
};

// Time in the sidebar: how long this page was visible (Page Visibility API: a hidden tab
// or a minimised window does not count), since its last save that reached the server. The
// save reports it and the server adds it to the note's time (at most launch to save).
const visible = {
  ms: 0,
  since: document.visibilityState === "visible" ? performance.now() : null,
  seconds() {
    const running = this.since === null ? 0 : performance.now() - this.since;
    return Math.round((this.ms + running) / 100) / 10;
  },
  /** After a save: what it reported is counted; start again from now. */
  reset() {
    this.ms = 0;
    if (this.since !== null) this.since = performance.now();
  },
};
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") {
    if (visible.since === null) visible.since = performance.now();
  } else if (visible.since !== null) {
    visible.ms += performance.now() - visible.since;
    visible.since = null;
  }
});

/** The note as the server will write it (GET /api/note/preview): the preview is the note. */
async function refreshPreview() {
  const seq = ++note.previewSeq;
  try {
    const { data } = await api.notePreview();
    // A later request (another decision meanwhile) answers for the newer state.
    if (seq !== note.previewSeq) return;
    note.preview = data;
    note.previewError = null;
  } catch (err) {
    if (seq !== note.previewSeq) return;
    note.previewError = err instanceof ApiError ? err.message : "The preview could not be loaded.";
  }
  note.previewDone = seq;
  render();
}

function previewText() {
  return note.preview?.text ?? "";
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
  const summary = note.summary;
  if (summary) {
    const said = { in_chart: "in the chart", pending: "saved here, the app will retry", failed: `could not be saved${summary.error ? `: ${summary.error}` : ""}` }[summary.status] ?? summary.status;
    status.append(el("span", { className: "status-detail avs-status", text: ` After-visit summary: ${said}.` }));
  }
}

function schedulePoll() {
  clearTimeout(note.timer);
  if (note.latest?.status !== "pending" && note.summary?.status !== "pending") return;
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
    // The clinician's note; the patient's after-visit summary is a document of its own.
    const notes = (data.notes ?? []).filter((n) => (n.kind ?? "note") === "note");
    note.latest = notes.length ? notes[notes.length - 1] : null;
    const summaries = (data.notes ?? []).filter((n) => n.kind === "after_visit_summary");
    note.summary = summaries.length ? summaries[summaries.length - 1] : note.summary;
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
  render();
}

/** The decisions changed: compose the note again (on the server) and draw it. */
export function update(suggestions) {
  if (suggestions) note.decided = suggestions.some((s) => s.decision && (s.decision.action === "accept" || s.decision.action === "edit"));
  render();
  refreshPreview();
}

function renderOmitted() {
  const box = $("#note-omitted");
  if (!box) return;
  const omitted = note.preview?.omitted ?? [];
  box.hidden = omitted.length === 0;
  box.replaceChildren();
  if (!omitted.length) return;
  box.append(
    el("strong", { text: `Left out of the note: ${plural(omitted.length, "statement")} not verified against the chart.` }),
    " Edit the suggestion and remove the [unverified] marker to keep one.",
    el("ul", {}, ...omitted.map((o) => el("li", { text: o.text }))),
  );
}

/** The after-visit summary offer: a choice at the save step, its text and reading grade. */
function renderSummary() {
  const box = $("#avs");
  if (!box) return;
  const avs = note.preview?.afterVisitSummary;
  box.hidden = !avs?.offered;
  if (!avs?.offered) return;
  $("#avs-text").textContent = avs.text;
  const grade = $("#avs-grade");
  grade.textContent = `reading grade ${avs.readingGrade} (the site asks for ${avs.targetGrade} or lower)`;
  grade.classList.toggle("avs-grade-over", avs.readingGrade > avs.targetGrade);
}

/** Whether the after-visit summary is offered and chosen. */
function summaryChosen() {
  return Boolean(note.preview?.afterVisitSummary?.offered && $("#avs-save")?.checked);
}

/** Whether what a save would send differs from what was saved (the summary only if chosen). */
function changedSinceSaved() {
  if (note.savedText === null) return true;
  if (previewText() !== note.savedText) return true;
  return summaryChosen() && note.preview.afterVisitSummary.text !== note.savedSummary;
}

/** Draw the preview and the save button from the latest composition. */
function render() {
  const text = previewText();
  renderSummary();
  const sections = note.preview?.sections?.length ?? 0;
  const shown = $("#note-text");
  shown.textContent = text || (note.previewError ?? "Accept or edit a suggestion to start the note.");
  shown.dataset.empty = text ? "" : "true";
  $("#note-count").textContent = plural(sections, "section");
  renderOmitted();
  const button = $("#save-note");
  button.hidden = !note.canWrite;
  // While the server composes the note, the decisions say whether there is one to save.
  const composing = note.previewDone !== note.previewSeq;
  const unchanged = !composing && !changedSinceSaved() && note.latest?.status !== "failed";
  button.disabled = note.saving || !(composing ? note.decided : text) || unchanged;
  const label = $("#save-label");
  const savedLabel = { in_chart: "In the chart", pending: "Saved here, will retry" }[note.latest?.status] ?? "Note saved";
  label.textContent = note.savedText === null ? "Save note to chart" : unchanged ? savedLabel : "Save changes to chart";
  const changed = $("#note-changed");
  changed.hidden = !(note.savedText !== null && text && changedSinceSaved());
}

/** Send the note to the chart; true if the EHR has it or the app will retry. */
export async function save(suggestions, announce) {
  const button = $("#save-note");
  if (!note.canWrite || note.saving) return false;
  if (button.disabled) {
    // A key press must not vanish in silence (the S key reaches here, the button cannot).
    const unchanged = note.savedText !== null && previewText() && !changedSinceSaved();
    announce(unchanged ? "Nothing new to save: the chart has this note." : "Nothing to save yet: accept or edit a suggestion first.");
    return false;
  }
  note.saving = true;
  note.error = null;
  render();
  renderDelivery();
  try {
    // The note the server composes now (every decision is recorded before the preview asks).
    await refreshPreview();
    if (!previewText()) throw new ApiError(400, "bad_request", "nothing to save: accept or edit a suggestion.");
    const withSummary = summaryChosen();
    const sent = previewText();
    const sentSummary = withSummary ? note.preview.afterVisitSummary.text : note.savedSummary;
    const body = { secondsInSidebar: Math.min(visible.seconds(), 86_400) };
    if (withSummary) body.afterVisitSummary = true;
    const { data } = await api.saveNote(body);
    visible.reset();
    note.savedText = sent;
    note.savedSummary = sentSummary;
    note.latest = data.note ?? { status: data.status ?? "in_chart", documentReference: data.documentReference };
    if (data.afterVisitSummary) note.summary = data.afterVisitSummary.note ?? { status: data.afterVisitSummary.status, error: data.afterVisitSummary.error };
    const summarySaid = withSummary ? (note.summary?.status === "in_chart" ? " The after-visit summary is in the chart too." : " The after-visit summary is kept here.") : "";
    announce((note.latest.status === "pending" ? "Saved here; the app will retry sending it to the chart." : "The note is in the chart as a draft for you to sign.") + summarySaid);
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
    update();
    schedulePoll();
  }
}

/** Set up from the launch context; picks up a note saved earlier in this launch. */
export async function init(context) {
  note.canWrite = Boolean(context.canWriteNotes);
  $("#save-note").hidden = !note.canWrite;
  $("#avs-save")?.addEventListener("change", () => render());
  renderDelivery();
  await refreshDelivery();
  schedulePoll();
}

/** After a refresh the note is assembled again from the suggestions now shown. */
export function resetSaved() {
  note.savedText = null;
  note.savedSummary = null;
}

// The visit: the draft saved for it in an earlier launch or another tab (GET /api/notes'
// `visit`), and what changed since — suggestions new since the draft, and the draft's
// sections that the chart no longer gives. Decisions themselves come with the suggestions.

import { $, $$, el, plural } from "./dom.js";

function clock(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return "";
  const time = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const today = new Date().toDateString() === when.toDateString();
  return today ? time : `${when.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
}

const WHERE = {
  in_chart: "in the chart for you to sign",
  pending: "kept here, the app is sending it to the chart",
  failed: "the EHR refused it",
};

function where(draft) {
  // Signed in the EHR: the record now; the app never overwrites it.
  if (draft.signed) return "signed in the EHR; saving again writes a new draft that replaces it";
  return WHERE[draft.status] ?? draft.status;
}

/** Mark the cards shown since the draft was saved (and unmark the others). */
function markNew(ids) {
  const fresh = new Set(ids);
  for (const card of $$("#suggestion-list > .card")) {
    const isNew = fresh.has(card.dataset.id);
    card.classList.toggle("new-since-draft", isNew);
    let badge = card.querySelector(".since-draft");
    if (isNew && !badge) {
      badge = el("span", { className: "badge badge-new since-draft", text: "New since your draft" });
      card.querySelector(".card-head")?.append(badge);
    } else if (!isNew && badge) {
      badge.remove();
    }
  }
}

/** Draw the visit's draft line, and what changed since it was saved. */
export function renderVisit(visit) {
  const box = $("#visit-status");
  if (!box) return;
  const draft = visit?.draft;
  if (!draft) {
    box.hidden = true;
    box.replaceChildren();
    markNew([]);
    return;
  }
  const changes = visit.changes ?? { new: [], removed: [] };
  const parts = [
    el("strong", { className: "draft-saved", text: `Draft saved ${clock(draft.savedAt)}` }),
    el("span", { className: "status-detail", text: ` · ${where(draft)}${draft.revision > 1 ? ` · saved ${draft.revision} times` : ""}` }),
  ];
  if (changes.new.length || changes.removed.length) {
    const since = [];
    if (changes.new.length) since.push(`${plural(changes.new.length, "new suggestion")} to decide`);
    if (changes.removed.length) since.push(`${plural(changes.removed.length, "section")} of the draft no longer suggested`);
    parts.push(el("p", { className: "since-draft-summary", text: `The chart changed since the draft: ${since.join("; ")}.` }));
    if (changes.removed.length) {
      parts.push(
        el(
          "ul",
          { className: "removed-since-draft", attrs: { "aria-label": "In the saved draft, no longer suggested" } },
          ...changes.removed.map((r) => el("li", { text: `${r.title} — in the saved draft; the chart now gives different text, or none` })),
        ),
      );
    }
  }
  box.replaceChildren(...parts);
  box.hidden = false;
  markNew(changes.new);
}

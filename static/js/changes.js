// What changed since the last note or visit, above the cards: new results, medications
// started and stopped, new problems (GET /api/suggestions "changes"), each with its sources.

import { el, plural } from "./dom.js";
import { renderCitations } from "./sources.js";

// Each group reads as a line of a note ("Results: HbA1c 8.3% … · eGFR 49 …"): dense, in order.
const GROUPS = [
  [["result"], "Results"],
  [["medication_started", "medication_stopped"], "Medications"],
  [["problem"], "New problems"],
];

/** "Since the last note (Progress note, 2026-08-03)": the anchor is always said. */
export function anchorHeading(anchor) {
  if (!anchor) return "What changed";
  if (anchor.kind === "window") return `What changed: ${anchor.text}`;
  return `Since ${anchor.text}`;
}

/** Fill the summary section; hidden when the server sent none. */
export function renderChanges(section, changes, { onOpen } = {}) {
  if (!section) return;
  if (!changes) {
    section.hidden = true;
    return;
  }
  const items = changes.items ?? [];
  const heading = el("h2", { className: "changes-heading", text: anchorHeading(changes.anchor), attrs: { id: "changes-heading" } });
  const children = [heading];
  if (!items.length) {
    children.push(el("p", { className: "changes-none", text: "Nothing new in the chart since then." }));
  } else {
    children.push(el("p", { className: "visually-hidden", text: `${plural(items.length, "change")}.` }));
    const groups = el("dl", { className: "changes-groups" });
    for (const [categories, label] of GROUPS) {
      const mine = items.filter((i) => categories.includes(i.category));
      if (!mine.length) continue;
      groups.append(
        el(
          "div",
          { className: "changes-group", dataset: { category: categories[0] } },
          el("dt", { text: `${label}:` }),
          el(
            "dd",
            {},
            el(
              "ul",
              { className: "changes-list" },
              ...mine.map((item) =>
                el("li", { className: "change" }, el("span", { className: "change-text", text: item.text }), renderCitations(item.citations, { onOpen, compact: true })),
              ),
            ),
          ),
        ),
      );
    }
    children.push(groups);
  }
  section.replaceChildren(...children);
  section.hidden = false;
}

// The sidebar's keys: one table, used both to handle key presses and to draw the help.

import { el } from "./dom.js";

/** [keys shown, what it does, command name]. The command names are sidebar.js's handlers. */
export const KEYS = [
  [["J", "↓"], "Next suggestion", "next"],
  [["K", "↑"], "Previous suggestion", "previous"],
  [["O"], "Open or close the suggestion (all its lines and sources; Enter on a card too)", "toggle"],
  [["A"], "Accept", "accept"],
  [["E"], "Edit in place (Ctrl+Enter uses it, Esc cancels)", "edit"],
  [["R"], "Reject with a reason", "reject"],
  [["F"], "Flag as unsafe (to the governance team's review queue)", "flag"],
  [["D"], "Show or hide the changes of an edit", "diff"],
  [["I"], "About this suggestion: who made it, for what, its cautions and local validation", "about"],
  [["Shift", "A"], "Accept all pending suggestions", "acceptAll"],
  [["P"], "Show or hide the note preview", "preview"],
  [["S"], "Save the note to the chart", "save"],
  [["U"], "Read the chart again", "refresh"],
  [["?"], "This list of keys", "help"],
  [["Esc"], "Close a panel, a source or this list", null],
];

/** The command a key press asks for, or null. Letters are read case-blind except Shift+A. */
export function commandFor(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return null;
  const key = event.key;
  if (key === "?") return "help";
  if (key === "ArrowDown") return "next";
  if (key === "ArrowUp") return "previous";
  if (key.length !== 1) return null;
  if (event.shiftKey && (key === "A" || key === "a")) return "acceptAll";
  return { j: "next", k: "previous", o: "toggle", a: "accept", e: "edit", r: "reject", f: "flag", d: "diff", i: "about", p: "preview", s: "save", u: "refresh" }[key.toLowerCase()] ?? null;
}

/** True where a key press is typing, not a command (text fields, selects, editable content). */
export function isTyping(target) {
  if (!(target instanceof Element)) return false;
  if (target.isContentEditable) return true;
  if (target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement) return true;
  if (target instanceof HTMLInputElement) return !["button", "submit", "reset", "checkbox", "radio"].includes(target.type);
  return false;
}

/** The rows of the help dialog's table. */
export function helpRows() {
  return KEYS.map(([keys, what]) =>
    el(
      "tr",
      {},
      el("th", { attrs: { scope: "row" } }, ...keys.flatMap((k, i) => (i ? [keys[0] === "Shift" ? " + " : " or ", el("kbd", { text: k })] : [el("kbd", { text: k })]))),
      el("td", { text: what }),
    ),
  );
}

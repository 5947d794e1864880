// One card per suggestion: its statements with their sources, the engine that wrote it,
// and the decision panels (edit in place, reject with a coded reason, flag as unsafe).

import { el, kbd, uniqueId, plural } from "./dom.js";
import { diffWords, changeCounts } from "./diff.js";
import { renderCitations } from "./sources.js";

/** Coded override reasons, as the feedback store and CDS Hooks feedback carry them. */
export const REJECT_REASONS = [
  ["not_relevant", "Not relevant"],
  ["inaccurate", "Inaccurate"],
  ["incomplete", "Incomplete"],
  ["unsafe", "Unsafe"],
  ["other", "Other"],
];
const REASON_LABEL = Object.fromEntries(REJECT_REASONS);

export function decisionLabel(decision) {
  if (!decision) return "";
  switch (decision.action) {
    case "accept":
      return "Accepted";
    case "edit":
      return "Edited";
    case "reject":
      return decision.reason ? `Rejected: ${REASON_LABEL[decision.reason] ?? decision.reason}` : "Rejected";
    case "flag":
      return "Flagged as unsafe";
    default:
      return decision.action;
  }
}

/** The text this suggestion puts in the note: the edit if there is one. */
export function finalText(suggestion) {
  return suggestion.decision?.action === "edit" && suggestion.decision.text ? suggestion.decision.text : suggestion.text;
}

function engineLine(engine, onAbout) {
  const ai = !engine.ruleBased;
  return el(
    "p",
    { className: "engine" },
    el("span", { className: `badge ${ai ? "badge-ai" : "badge-rules"}`, text: ai ? "AI-generated" : "Rule-based" }),
    " ",
    el("span", { className: "engine-name", text: `${engine.name} ${engine.version}` }),
    " ",
    el(
      "button",
      { className: "link-button about-button", attrs: { type: "button", "aria-haspopup": "dialog", "aria-keyshortcuts": "i" }, onClick: onAbout },
      "About this suggestion ",
      kbd("I"),
    ),
  );
}

function statementItem(statement, onAction) {
  const unverified = statement.verified === false;
  const item = el("li", { className: `statement${unverified ? " unverified" : ""}` });
  item.append(el("span", { className: "statement-text", text: statement.text }));
  if (unverified) {
    item.append(
      el(
        "span",
        { className: "unverified-note" },
        el("strong", { className: "badge badge-warn", text: "Unverified" }),
        " — check against the chart",
      ),
    );
    const issues = (statement.issues ?? []).filter(Boolean);
    if (issues.length) item.append(el("ul", { className: "issues" }, ...issues.map((text) => el("li", { text }))));
  }
  if ((statement.citations ?? []).length) item.append(renderCitations(statement.citations, { onOpen: onAction }));
  if (statement.rule) item.append(el("span", { className: "rule", text: `Site rule: ${statement.rule}` }));
  return item;
}

/** Said when a panel reopens with text kept from before a reload or a failed save (drafts.js). */
function keptNotice() {
  return el("p", { className: "kept-notice", hidden: true, attrs: { role: "status" } });
}

function panelButtons(submitLabel, submitClass, onCancel) {
  return el(
    "div",
    { className: "row" },
    el("button", { className: submitClass, text: submitLabel, attrs: { type: "submit" } }),
    el("button", { className: "cancel", text: "Cancel", attrs: { type: "button" }, onClick: onCancel }),
  );
}

function editPanel(handlers) {
  const id = uniqueId("edit");
  const form = el(
    "form",
    { className: "panel card-edit", hidden: true, attrs: { "aria-label": "Edit the suggestion" } },
    keptNotice(),
    el("label", { className: "field-label", text: "Edit the text for the note", attrs: { for: id } }),
    el("textarea", { attrs: { id, rows: 7, maxlength: 20000, "aria-describedby": `${id}-hint` } }),
    el("p", { className: "hint", attrs: { id: `${id}-hint` } }, kbd("Ctrl"), "+", kbd("Enter"), " uses the edited text · ", kbd("Esc"), " cancels"),
    panelButtons("Use edited text", "primary save-edit", handlers.onCancel),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    handlers.onSubmitEdit(form.querySelector("textarea").value);
  });
  return form;
}

function rejectPanel(handlers) {
  const name = uniqueId("reason");
  const commentId = uniqueId("reject-comment");
  const errorId = uniqueId("reject-error");
  const fieldset = el(
    "fieldset",
    { className: "reasons", attrs: { "aria-describedby": errorId } },
    el("legend", { text: "Why reject it?" }),
    ...REJECT_REASONS.map(([value, label]) =>
      el("label", { className: "reason" }, el("input", { attrs: { type: "radio", name, value } }), ` ${label}`),
    ),
  );
  const error = el("p", { className: "field-error", hidden: true, text: "Choose a reason.", attrs: { id: errorId } });
  const form = el(
    "form",
    { className: "panel card-reject", hidden: true, attrs: { "aria-label": "Reject the suggestion" } },
    keptNotice(),
    fieldset,
    error,
    el("label", { className: "field-label", text: "Comment (optional)", attrs: { for: commentId } }),
    el("textarea", { className: "reject-comment", attrs: { id: commentId, rows: 2, maxlength: 2000 } }),
    el("p", { className: "hint" }, "Arrow keys choose · ", kbd("Ctrl"), "+", kbd("Enter"), " rejects · ", kbd("Esc"), " cancels"),
    panelButtons("Reject", "confirm-reject", handlers.onCancel),
  );
  fieldset.addEventListener("change", () => {
    error.hidden = true;
    fieldset.removeAttribute("aria-invalid");
    // Choosing the reason is one action, however many arrow presses it took.
    if (!form.dataset.reasonCounted) {
      form.dataset.reasonCounted = "true";
      handlers.onAction();
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = form.querySelector("input[type=radio]:checked");
    if (!chosen) {
      error.hidden = false;
      fieldset.setAttribute("aria-invalid", "true");
      form.querySelector("input[type=radio]").focus();
      return;
    }
    handlers.onSubmitReject(chosen.value, form.querySelector(".reject-comment").value);
  });
  return form;
}

function flagPanel(handlers) {
  const id = uniqueId("flag-comment");
  const form = el(
    "form",
    { className: "panel card-flag", hidden: true, attrs: { "aria-label": "Flag the suggestion as unsafe" } },
    el("p", { className: "flag-explain", text: "Flag as unsafe: this suggestion goes to the governance team's review queue, and stays out of the note." }),
    keptNotice(),
    el("label", { className: "field-label", text: "What is unsafe about it? (optional)", attrs: { for: id } }),
    el("textarea", { className: "flag-comment", attrs: { id, rows: 2, maxlength: 2000 } }),
    el("p", { className: "hint" }, kbd("Ctrl"), "+", kbd("Enter"), " flags · ", kbd("Esc"), " cancels"),
    panelButtons("Flag as unsafe", "danger confirm-flag", handlers.onCancel),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    handlers.onSubmitFlag(form.querySelector(".flag-comment").value);
  });
  return form;
}

function actionButton(className, label, key, onClick, extra = {}) {
  return el(
    "button",
    { className, attrs: { type: "button", "aria-keyshortcuts": key.toLowerCase(), ...extra }, onClick },
    label,
    " ",
    kbd(key),
  );
}

// `handlers` of a card: onAccept, onEdit, onReject, onFlag, onCancel, onSubmitEdit(text),
// onSubmitReject(reason, comment), onSubmitFlag(comment), onToggleDiff, onAbout, onAction (any
// other action spent on it, for the honest action count).

// A search this card draws on stopped early: say which, and whether "latest" can be trusted.
function chartIncompleteNote(items) {
  if (!items.length) return null;
  const latestMissing = items.some((i) => !i.latestRead);
  return el(
    "div",
    { className: "chart-incomplete", attrs: { role: "note" } },
    el("strong", { text: "Chart not read in full: " }),
    latestMissing
      ? "the latest values may not be among those read; check the chart before relying on them."
      : "older history was not read; the latest values were read first.",
    el("ul", {}, ...items.map((i) => el("li", { text: `${i.resourceType}: ${i.detail}` }))),
  );
}

/** Kinds whose first statement names their subject (a problem): one line when closed. */
const ONE_LINE_KINDS = new Set(["assessment_plan"]);

function statementsOf(suggestion) {
  return suggestion.statements?.length
    ? suggestion.statements
    : [{ text: suggestion.text, citations: suggestion.citations ?? [], verified: null }];
}

/** The card's first line: what it shows closed (the edit's first line after an edit). */
function leadText(suggestion) {
  if (suggestion.decision?.action === "edit" && suggestion.decision.text) {
    return suggestion.decision.text.trim().split("\n")[0].replace(/^[-•*]\s*/, "");
  }
  return statementsOf(suggestion)[0]?.text ?? "";
}

/**
 * A card for one suggestion, closed to its first line: its heading is a button
 * (aria-expanded) that opens the rest — the other statements, their sources, the engine.
 */
export function createCard(suggestion, index, handlers) {
  const titleId = uniqueId("title");
  const detailsId = uniqueId("details");
  const statements = statementsOf(suggestion);
  const oneLine = ONE_LINE_KINDS.has(suggestion.kind);
  const card = el("li", {
    className: `card${oneLine ? " one-line" : ""}`,
    attrs: { tabindex: "-1", "aria-labelledby": titleId },
    dataset: { id: suggestion.id, index, kind: suggestion.kind },
  });
  card.id = `suggestion-${index}`;
  const more = statements.length - 1;
  const ai = suggestion.engine && !suggestion.engine.ruleBased;
  const head = el(
    "div",
    { className: "card-head" },
    el(
      "h3",
      { className: "card-heading" },
      el(
        "button",
        {
          className: "card-toggle",
          attrs: { type: "button", "aria-expanded": "false", "aria-controls": detailsId, "aria-keyshortcuts": "o" },
          onClick: () => {
            handlers.onAction();
            toggleCard(card);
          },
        },
        el("span", { className: "card-title", text: suggestion.title, attrs: { id: titleId } }),
        el("span", { className: "card-lead", text: leadText(suggestion) }),
        // "+4 ▸": how much more the card holds (aria-expanded says open or closed).
        el("span", { className: "card-more", attrs: { "aria-hidden": "true" }, text: more > 0 ? `+${more}` : "" }),
        more > 0 ? el("span", { className: "visually-hidden", text: ` (${plural(more, "more line")})` }) : null,
      ),
    ),
    ai ? el("span", { className: "badge badge-ai head-ai", text: "AI", attrs: { title: "AI-generated" } }) : null,
    el("span", { className: "decision-badge", hidden: true, attrs: { "aria-live": "off" } }),
  );
  const details = el("div", { className: "card-details", hidden: true, attrs: { id: detailsId } });
  card.append(head, details);
  details.append(engineLine(suggestion.engine ?? {}, handlers.onAbout));
  if (suggestion.engine?.fallbackReason) {
    // Said on the closed card too: the clinician must know the AI did not write this.
    card.insertBefore(
      el(
        "p",
        { className: "fallback" },
        el("strong", { text: suggestion.engine.interim ? "AI draft on its way: " : suggestion.engine.kept ? "Rule-based draft kept: " : "AI draft unavailable: " }),
        suggestion.engine.fallbackReason,
      ),
      details,
    );
  }
  const incomplete = chartIncompleteNote(suggestion.chartIncomplete ?? []);
  if (incomplete) card.insertBefore(incomplete, details);
  const body = el("div", { className: "card-body" }, el("ul", { className: "statements" }, ...statements.map((s) => statementItem(s, handlers.onAction))));

  const diffId = uniqueId("diff");
  const edited = el(
    "div",
    { className: "edited", hidden: true },
    el("p", { className: "edited-label", text: "Your edited text (goes in the note)" }),
    el("p", { className: "edited-text" }),
    el(
      "button",
      { className: "link-button toggle-diff", attrs: { type: "button", "aria-expanded": "false", "aria-controls": diffId, "aria-keyshortcuts": "d" }, onClick: handlers.onToggleDiff },
      el("span", { className: "toggle-diff-label", text: "Show changes" }),
      " ",
      kbd("D"),
    ),
    el("div", { className: "diff", hidden: true, attrs: { id: diffId, role: "region", "aria-label": "Changes from the suggestion" } }),
    el("div", { className: "edited-sources" }),
  );
  details.append(body, edited);
  card.append(editPanel(handlers), rejectPanel(handlers), flagPanel(handlers));
  card.append(
    el(
      "div",
      { className: "card-actions", attrs: { role: "group", "aria-label": "Decide on this suggestion" } },
      actionButton("accept", "Accept", "A", handlers.onAccept),
      actionButton("edit", "Edit", "E", handlers.onEdit),
      actionButton("reject", "Reject", "R", handlers.onReject),
      actionButton("flag", "Flag", "F", handlers.onFlag, { "aria-label": "Flag as unsafe" }),
    ),
    el("p", { className: "card-message", attrs: { role: "alert" } }),
  );
  updateCard(card, suggestion, handlers);
  return card;
}

/** Open or close a card (`open` forces one); true when it is open afterwards. */
export function toggleCard(card, open) {
  const button = card.querySelector(".card-toggle");
  const details = card.querySelector(".card-details");
  const opening = open ?? details.hidden;
  details.hidden = !opening;
  card.classList.toggle("expanded", opening);
  button.setAttribute("aria-expanded", String(opening));
  return opening;
}

/** Show the card's decision: its badge, and after an edit the edited text and its changes. */
export function updateCard(card, suggestion, handlers) {
  const decision = suggestion.decision;
  card.dataset.decision = decision?.action ?? "";
  card.querySelector(".card-lead").textContent = leadText(suggestion);
  const badge = card.querySelector(".decision-badge");
  badge.textContent = decisionLabel(decision);
  badge.hidden = !decision;
  const edited = card.querySelector(".edited");
  const isEdit = decision?.action === "edit";
  edited.hidden = !isEdit;
  card.querySelector(".card-body").hidden = isEdit;
  if (isEdit) {
    edited.querySelector(".edited-text").textContent = decision.text;
    renderDiff(edited.querySelector(".diff"), suggestion.text, decision.text);
    const sources = edited.querySelector(".edited-sources");
    if (!sources.childElementCount && (suggestion.citations ?? []).length) {
      sources.append(el("p", { className: "edited-label", text: "Sources of the suggestion" }), renderCitations(suggestion.citations, { onOpen: handlers.onAction }));
    }
  }
}

/** The word-level changes from the suggestion to the edit, marked <del>/<ins> with words for screen readers. */
export function renderDiff(container, before, after) {
  const parts = diffWords(before, after);
  const { added, removed } = changeCounts(parts);
  const text = el("p", { className: "diff-text" });
  for (const part of parts) {
    if (part.op === "eq") text.append(part.text);
    else if (part.op === "del") text.append(el("del", {}, el("span", { className: "visually-hidden", text: "[removed: " }), part.text, el("span", { className: "visually-hidden", text: "]" })));
    else text.append(el("ins", {}, el("span", { className: "visually-hidden", text: "[added: " }), part.text, el("span", { className: "visually-hidden", text: "]" })));
  }
  container.replaceChildren(el("p", { className: "diff-summary", text: `${plural(added, "word")} added, ${removed} removed` }), text);
}

export function toggleDiff(card) {
  const button = card.querySelector(".toggle-diff");
  const diff = card.querySelector(".diff");
  if (!button || card.querySelector(".edited").hidden) return false;
  if (diff.hidden) toggleCard(card, true); // the changes are in the card's details
  diff.hidden = !diff.hidden;
  button.setAttribute("aria-expanded", String(!diff.hidden));
  button.querySelector(".toggle-diff-label").textContent = diff.hidden ? "Show changes" : "Hide changes";
  return true;
}

// DOM helpers. Chart data is untrusted: text only ever goes in through textContent or
// text nodes, never as HTML, and no element gets an inline style attribute (CSP).

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/**
 * Build an element: `el("p", { className: "x", text: "…", attrs: { role: "status" } }, child…)`.
 * Strings among the children become text nodes; null/false children are skipped.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  const { className, text, attrs, dataset, hidden, ...rest } = props;
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const [name, value] of Object.entries(dataset ?? {})) node.dataset[name] = String(value);
  if (hidden) node.hidden = true;
  for (const [name, value] of Object.entries(rest)) {
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2).toLowerCase(), value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A key hint: shown to sighted users, left out of the accessible name (aria-keyshortcuts says it). */
export function kbd(label) {
  return el("kbd", { text: label, attrs: { "aria-hidden": "true" } });
}

/** Put `text` into a status element and tag its kind (ok, pending, warn, error, busy). */
export function setStatus(node, text, kind = "") {
  node.textContent = text;
  node.dataset.kind = kind;
}

let uid = 0;
/** A page-unique id for labels and aria-controls on cloned markup. */
export function uniqueId(prefix) {
  uid += 1;
  return `${prefix}-${uid}`;
}

export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

// Text the clinician typed in a card's panel (an edit, a rejection or flag comment) and has
// not submitted yet, kept so that a failed save, an ended session or a reload does not
// lose it. Kept in sessionStorage, per launch and suggestion: this tab only, gone when the
// tab closes. Never localStorage: the text is about a patient (PHI) and must not outlive
// the tab. Forgotten once submitted, when the clinician cancels the panel, and on sign-out.
// A reload of the EHR's page or an ended session means a new launch: the text kept by an
// earlier launch in this tab is taken over by the card of the same patient, encounter,
// kind and title, and dropped otherwise (another patient's text never lingers).
// Browsers that deny storage to the EHR's frame (third-party cookies blocked, as many
// embedded browsers and this Chromium by default do) keep nothing: there the sidebar asks
// before the page unloads instead (sidebar.js).

const PREFIX = "smartapp.unsaved.";

let launchPrefix = null;
let scope = null; // { patient, encounter } of this launch

function storage() {
  try {
    return window.sessionStorage;
  } catch (err) {
    return null; // storage denied to this frame
  }
}

// A short digest of the launch's CSRF token names the launch in the key: it separates
// launches without putting the token itself in storage.
function digest(text) {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i += 1) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash.toString(16).padStart(8, "0");
}

/** Set up for this launch, from /api/context. */
export function init(context) {
  launchPrefix = context?.csrfToken ? `${PREFIX}${digest(context.csrfToken)}.` : null;
  scope = { patient: context?.patient?.id ?? null, encounter: context?.encounter?.id ?? null };
}

function keysOf(store) {
  const keys = [];
  for (let i = 0; i < store.length; i += 1) {
    const key = store.key(i);
    if (key?.startsWith(PREFIX)) keys.push(key);
  }
  return keys;
}

/**
 * Take over what earlier launches in this tab kept for these suggestions (same patient,
 * encounter, kind and title); drop the rest of what they kept.
 */
export function adopt(suggestions) {
  const store = storage();
  if (!store || !launchPrefix) return;
  for (const key of keysOf(store)) {
    if (key.startsWith(launchPrefix)) continue;
    let entry = null;
    try {
      entry = JSON.parse(store.getItem(key) ?? "null");
    } catch (err) {
      entry = null;
    }
    store.removeItem(key);
    if (!entry || entry.patient !== scope.patient || entry.encounter !== scope.encounter) continue;
    const match = suggestions.find((s) => s.kind === entry.kind && s.title === entry.title && !kept(s.id));
    if (match) keep(match.id, entry);
  }
}

const keyOf = (suggestionId) => (launchPrefix ? `${launchPrefix}${suggestionId}` : null);

/** Whether this frame may keep anything (false where the browser denies it storage). */
export function available() {
  const store = storage();
  if (!store) return false;
  try {
    store.setItem(`${PREFIX}probe`, "1");
    store.removeItem(`${PREFIX}probe`);
    return true;
  } catch (err) {
    return false;
  }
}

/**
 * Keep what a panel holds: `{ panel: "edit"|"reject"|"flag", text, reason?, kind, title }`
 * (kind and title of the suggestion, to find its card again in a later launch).
 */
export function keep(suggestionId, entry) {
  const store = storage();
  const key = keyOf(suggestionId);
  if (!store || !key) return;
  try {
    store.setItem(key, JSON.stringify({ ...entry, ...scope }));
  } catch (err) {
    // Storage full or denied: the text stays in the open panel.
  }
}

/** What was kept for this suggestion in this launch, or null. */
export function kept(suggestionId) {
  const store = storage();
  const key = keyOf(suggestionId);
  if (!store || !key) return null;
  try {
    const entry = JSON.parse(store.getItem(key) ?? "null");
    return entry && typeof entry.text === "string" && ["edit", "reject", "flag"].includes(entry.panel) ? entry : null;
  } catch (err) {
    return null;
  }
}

export function forget(suggestionId) {
  const store = storage();
  const key = keyOf(suggestionId);
  if (store && key) store.removeItem(key);
}

/** Forget every kept text in this tab, of any launch (on sign-out). */
export function forgetAll() {
  const store = storage();
  if (!store) return;
  for (const key of keysOf(store)) store.removeItem(key);
}

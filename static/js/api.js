// The sidebar's only way to reach the server: same-origin JSON with the CSRF header.
// The session cookie is HttpOnly and partitioned; tokens never reach this code.

const csrfToken = () =>
  document.querySelector('meta[name="csrf-token"]')?.getAttribute("content") ?? "";

// In a browser that blocks the app's cookies inside the EHR's frame, the callback's page
// hands over a per-window token instead: kept in this module's memory only (not in
// sessionStorage, which such browsers often deny the frame too, nor in any URL), and sent
// as a header on every call. It names this window's launch alone, so two charts open in
// two tabs never see each other's patient. Reloading the page ends it: open the app again.
const handover = document.querySelector('meta[name="window-token"]');
const windowToken = handover?.getAttribute("content") || null;
if (handover) {
  handover.remove();
  // The address bar still shows the callback's spent code and state: show the landing.
  const landing = document.querySelector('meta[name="landing"]')?.getAttribute("content");
  if (landing) history.replaceState(null, "", landing);
}

/** Whether this window carries its launch in a per-window token (no cookies). */
export const usesWindowToken = () => windowToken !== null;

function sessionHeaders() {
  const headers = { "X-CSRF-Token": csrfToken() };
  if (windowToken) headers["X-Window-Token"] = windowToken;
  return headers;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function request(method, path, body) {
  // The token goes on GETs too: it names this panel's launch, so a panel left open from
  // an earlier launch (another patient) gets a clear error instead of the new chart.
  const headers = { Accept: "application/json", ...sessionHeaders() };
  const init = { method, headers, credentials: "same-origin" };
  if (method !== "GET" && body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network", "The app could not be reached. Check the connection and try again.");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null;
  }
  if (!response.ok) {
    const error = data?.error ?? {};
    throw new ApiError(response.status, error.code ?? "error", error.message ?? `Request failed (${response.status}).`);
  }
  return { status: response.status, data };
}

export const api = {
  context: () => request("GET", "/api/context"),
  suggestions: () => request("GET", "/api/suggestions"),
  pending: () => request("GET", "/api/suggestions/pending"),
  refresh: () => request("POST", "/api/refresh"),
  feedback: (id, body) => request("POST", `/api/suggestions/${encodeURIComponent(id)}/feedback`, body),
  saveNote: (body) => request("POST", "/api/note", body ?? {}),
  notes: () => request("GET", "/api/notes"),
  notePreview: () => request("GET", "/api/note/preview"),
  pulse: (body) => request("POST", "/api/pulse", body),
  about: (kind) => request("GET", `/api/about?kind=${encodeURIComponent(kind)}`),
  logout: () => request("POST", "/logout"),
  /** The EHR's SMART style as CSS text (the page's <link> carries no window token). */
  styleSheet: async () => {
    const href = document.querySelector("link[data-smart-style]")?.href;
    if (!href) return "";
    const response = await fetch(href, { headers: sessionHeaders(), credentials: "same-origin" });
    return response.ok ? response.text() : "";
  },
  resource: (reference) => {
    // "Observation/1", or an absolute or versioned reference: the last Type/id pair.
    const parts = String(reference).split("/_history/")[0].split("/");
    const [type, id] = [parts.at(-2) ?? "", parts.at(-1) ?? ""];
    return request("GET", `/api/resources/${encodeURIComponent(type)}/${encodeURIComponent(id)}`);
  },
};

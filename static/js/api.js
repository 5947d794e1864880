// The sidebar's only way to reach the server: same-origin JSON with the CSRF header.
// The session cookie is HttpOnly and partitioned; tokens never reach this code.

const csrfToken = () =>
  document.querySelector('meta[name="csrf-token"]')?.getAttribute("content") ?? "";

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
  const headers = { Accept: "application/json", "X-CSRF-Token": csrfToken() };
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
  resource: (reference) => {
    // "Observation/1", or an absolute or versioned reference: the last Type/id pair.
    const parts = String(reference).split("/_history/")[0].split("/");
    const [type, id] = [parts.at(-2) ?? "", parts.at(-1) ?? ""];
    return request("GET", `/api/resources/${encodeURIComponent(type)}/${encodeURIComponent(id)}`);
  },
};

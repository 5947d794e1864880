// The admin pages' forms send JSON to /admin/api/* with the session's CSRF token, then reload.
// No inline script: the page's CSP is script-src 'self'.

const csrfToken = () =>
  document.querySelector('meta[name="csrf-token"]')?.getAttribute("content") ?? "";

function formBody(form) {
  const body = {};
  for (const element of form.elements) {
    if (!element.name || element.disabled) continue;
    if (element.type === "checkbox") {
      body[element.name] = element.checked;
    } else if (element.type === "number") {
      if (element.value !== "") body[element.name] = Number(element.value);
    } else if (element.value !== "") {
      body[element.name] = element.value;
    }
  }
  return body;
}

function showStatus(form, kind, message) {
  const status = form.querySelector(".form-status");
  if (!status) return;
  status.dataset.kind = kind;
  status.textContent = message;
}

async function submit(form) {
  const method = form.dataset.method || "POST";
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
  const button = form.querySelector("button[type=submit]");
  if (button) button.disabled = true;
  showStatus(form, "pending", "Saving…");
  try {
    const response = await fetch(form.dataset.api, {
      method,
      credentials: "same-origin",
      headers: {
        Accept: "application/json",
        "Content-Type": "application/json",
        "X-CSRF-Token": csrfToken(),
      },
      body: method === "DELETE" ? undefined : JSON.stringify(formBody(form)),
    });
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const message = data?.error?.message ?? `The request failed (${response.status}).`;
      showStatus(form, "error", message);
      return;
    }
    showStatus(form, "ok", "Done.");
    window.location.reload();
  } catch (err) {
    showStatus(form, "error", "The server could not be reached. Try again.");
  } finally {
    if (button) button.disabled = false;
  }
}

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.dataset.api) return;
  event.preventDefault();
  submit(form);
});

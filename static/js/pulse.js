// The clinician pulse: after a sampled saved note, two one-tap 1–5 questions, skippable.
// Radio groups give the keyboard path for free (Tab to a question, arrows to a score).

import { api, ApiError } from "./api.js";
import { $, el } from "./dom.js";

function question(q) {
  const name = `pulse-${q.id}`;
  const options = [1, 2, 3, 4, 5].map((score) =>
    el("label", { className: "pulse-score" },
      el("input", { attrs: { type: "radio", name, value: String(score) } }),
      String(score)),
  );
  return el("fieldset", { className: "pulse-question", dataset: { question: q.id } },
    el("legend", { text: q.text }),
    el("div", { className: "pulse-scores" }, options),
    el("p", { className: "pulse-scale", text: `${q.low} · ${q.high}` }),
  );
}

function chosen(section, id) {
  const picked = section.querySelector(`fieldset[data-question="${id}"] input:checked`);
  return picked ? Number(picked.value) : null;
}

async function send(section, pulse, body, announce) {
  const status = $(".pulse-status", section);
  try {
    await api.pulse({ note: pulse.note, ...body });
    section.replaceChildren(el("p", { className: "pulse-thanks", text: body.skipped ? "Skipped." : "Thank you: your answer helps the team judge the drafts." }));
    announce(body.skipped ? "Pulse skipped." : "Thank you, answer recorded.");
    setTimeout(() => { section.hidden = true; }, 4000);
  } catch (err) {
    status.textContent = err instanceof ApiError ? err.message : "Could not send the answer. Try again.";
  }
}

/** Show the pulse for a just-saved note (`pulse` as POST /api/note returned it). */
export function showPulse(pulse, announce) {
  const section = $("#pulse");
  if (!section || !pulse) return;
  const answer = el("button", { className: "primary", text: "Send", attrs: { type: "button" } });
  const skip = el("button", { text: "Skip", attrs: { type: "button" } });
  section.replaceChildren(
    el("h2", { text: "Two quick questions", attrs: { id: "pulse-title" } }),
    ...pulse.questions.map(question),
    el("div", { className: "pulse-actions" }, answer, skip),
    el("p", { className: "pulse-status", attrs: { role: "status", "aria-live": "polite" } }),
  );
  answer.addEventListener("click", () => {
    const savedTime = chosen(section, "savedTime");
    const checking = chosen(section, "checking");
    if (savedTime === null && checking === null) {
      $(".pulse-status", section).textContent = "Choose a score, or skip.";
      return;
    }
    send(section, pulse, { savedTime, checking }, announce);
  });
  skip.addEventListener("click", () => send(section, pulse, { skipped: true }, announce));
  section.hidden = false;
  announce("Two quick questions about this draft: choose a score from 1 to 5, or skip.");
}

"""Browser: the clinician's sidebar in real Chromium, inside the sandbox EHR's cross-site iframe.

Covers issue 5's flows end to end: keyboard only from launch to a saved note, an inline
edit with its word diff, a coded rejection, a flag, citations opened in place, the note's
delivery state when the EHR is down, and a hostile chart that must render inert. What the
sidebar says it recorded is checked in the app's store and in the sandbox EHR's FHIR store.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests
from playwright.sync_api import expect
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from smartapp.feedback.models import ShownSuggestion
from smartapp.stack import Stack
from tests.browser.conftest import screenshot
from tests.integration.conftest import start_stack

pytestmark = pytest.mark.browser

HOSTILE_BUNDLE = (
    Path(__file__).resolve().parents[1] / "fixtures" / "sandbox" / "script-name-patient.json"
)


@pytest.fixture
def stack(tmp_path: Path, sandbox_template: Path) -> Iterator[Stack]:
    running = start_stack(tmp_path, sandbox_template)
    yield running
    running.stop()


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.console_messages = []  # type: ignore[attr-defined]
    page.on(
        "console",
        lambda m: page.console_messages.append((m.type, m.text, m.location.get("url", ""))),
    )
    yield page
    context.close()


def open_chart(page: Any, stack: Stack, patient: str) -> Any:
    """The EHR's chart page for a patient; the sidebar launches in its iframe."""
    page.goto(f"{stack.ehr_url}/patients/{patient}")
    sidebar = page.frame_locator("iframe#smart-app")
    sidebar.locator("#suggestion-list > .card").first.wait_for(timeout=30_000)
    return sidebar


def sidebar_clip(page: Any) -> dict[str, float]:
    """The sidebar iframe's box on the EHR page, for screenshots of the sidebar alone."""
    box = page.locator("iframe#smart-app").bounding_box()
    assert box is not None
    return box


def open_card(card: Any) -> Any:
    """Open a card closed to its first line (its heading is the button), as a click does."""
    card.locator(".card-toggle").click()
    expect(card.locator(".card-toggle")).to_have_attribute("aria-expanded", "true")
    return card


def app_frame(page: Any, stack: Stack) -> Any:
    return next(f for f in page.frames if f.url.startswith(stack.app_url))


def decisions(stack: Stack) -> list[tuple[ShownSuggestion, list[Any]]]:
    """Every suggestion shown and its decisions, in the order shown."""
    db = stack.app.extensions["smartapp.db"]
    with db.session() as session:
        rows = session.scalars(
            select(ShownSuggestion)
            .options(selectinload(ShownSuggestion.decisions))
            .order_by(ShownSuggestion.shown_at, ShownSuggestion.position)
        ).all()
        return [(row, list(row.decisions)) for row in rows]


def notes_in_chart(stack: Stack, patient: str) -> list[str]:
    """The text of every AI-assisted note the sandbox EHR holds for the patient."""
    docs = requests.get(
        f"{stack.ehr_url}/_sandbox/resources/DocumentReference",
        params={"patient": patient},
        timeout=10,
    ).json()
    return [
        base64.b64decode(d["content"][0]["attachment"]["data"]).decode()
        for d in docs
        if any(s.get("code") == "AIAST" for s in d.get("meta", {}).get("security", []))
    ]


def fhir_requests(stack: Stack) -> int:
    return int(requests.get(f"{stack.ehr_url}/_sandbox/stats", timeout=10).json()["fhir"])


# -- keyboard only -------------------------------------------------------------------------


def test_keyboard_only_from_launch_to_a_saved_note(page, stack: Stack):
    sidebar = open_chart(page, stack, "pt-01")
    frame = app_frame(page, stack)
    # Any pointer event in the sidebar would fail the test: keys only from here on.
    frame.evaluate(
        """() => { window.pointerEvents = 0;
        for (const type of ["pointerdown", "mousedown", "mouseup", "touchstart"])
          document.addEventListener(type, () => { window.pointerEvents += 1; }, true); }"""
    )
    keys = page.keyboard
    # Into the iframe the way a clinician would: Tab through the EHR page.
    for _ in range(80):
        keys.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.id") == "smart-app":
            break
    else:
        pytest.fail("Tab never reached the sidebar iframe")

    # An EHR launch: the EHR shows the patient, so the sidebar does not (need_patient_banner).
    expect(sidebar.locator("#patient-banner")).to_be_hidden()
    # The EHR's SMART style is honoured: the sandbox's background colour, through /style.css.
    background = frame.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(245, 247, 250)"

    keys.press("?")
    expect(sidebar.locator("#help")).to_be_visible()
    expect(sidebar.locator("#help-rows tr")).to_have_count(15)  # with I, About
    keys.press("Escape")
    expect(sidebar.locator("#help")).to_be_hidden()
    # S before any decision: said, not silently dropped.
    keys.press("s")
    expect(sidebar.locator("#announcer")).to_have_text(
        "Nothing to save yet: accept or edit a suggestion first."
    )

    cards = sidebar.locator("#suggestion-list > .card")
    total = cards.count()
    assert total >= 5
    titles = [cards.nth(i).locator(".card-title").inner_text() for i in range(total)]

    keys.press("j")  # to the first suggestion
    expect(cards.nth(0)).to_be_focused()
    keys.press("a")
    expect(cards.nth(0)).to_have_attribute("data-decision", "accept")
    expect(cards.nth(1)).to_be_focused()  # on to the next one to decide

    keys.press("e")
    textarea = cards.nth(1).locator(".card-edit textarea")
    expect(textarea).to_be_focused()
    keys.press("Control+End")
    keys.type("\nReviewed with the patient today.")
    keys.press("Control+Enter")
    expect(cards.nth(1)).to_have_attribute("data-decision", "edit")
    keys.press("k")
    expect(cards.nth(1)).to_be_focused()
    keys.press("d")
    diff = cards.nth(1).locator(".diff")
    expect(diff).to_be_visible()
    expect(diff.locator("ins")).to_contain_text("Reviewed with the patient today.")

    keys.press("j")
    keys.press("r")
    expect(cards.nth(2).locator(".card-reject input[type=radio]").first).to_be_focused()
    keys.press("ArrowDown")  # moves to and chooses "Inaccurate"
    keys.press("Tab")
    keys.type("Trend already in the visit note")
    keys.press("Control+Enter")
    expect(cards.nth(2)).to_have_attribute("data-decision", "reject")
    expect(cards.nth(2).locator(".decision-badge")).to_have_text("Rejected: Inaccurate")

    keys.press("f")
    expect(cards.nth(3).locator(".card-flag")).to_contain_text("governance team's review queue")
    keys.type("Plan names a drug the patient is allergic to")
    keys.press("Control+Enter")
    expect(cards.nth(3)).to_have_attribute("data-decision", "flag")

    keys.press("Shift+A")  # the rest, in one action
    expect(sidebar.locator("#pending-count")).to_have_text(f"0 of {total} to decide")
    expect(sidebar.locator("#save-note")).to_be_focused()

    keys.press("p")
    expect(sidebar.locator("#note-text")).to_be_visible()
    keys.press("s")
    status = sidebar.locator("#save-status[data-kind=ok]")
    status.wait_for(timeout=20_000)
    expect(status).to_contain_text("In the chart as a draft for you to sign")
    expect(sidebar.locator("#save-label")).to_have_text("In the chart")
    keys.press("p")  # the preview closes again
    expect(sidebar.locator("#note-text")).to_be_hidden()
    keys.press("k")
    screenshot(page, "sidebar_keyboard_saved.png", clip=sidebar_clip(page))

    assert frame.evaluate("window.pointerEvents") == 0

    recorded = decisions(stack)
    assert [row.title for row, _ in recorded] == titles
    latest = [(row, ds[-1]) for row, ds in recorded]
    assert [d.action for _, d in latest] == ["accept", "edit", "reject", "flag"] + ["accept"] * (
        total - 4
    )
    edit_row, edit = latest[1]
    assert edit.final_text == edit_row.text + "\nReviewed with the patient today."
    assert edit.edit_distance == len("\nReviewed with the patient today.")
    assert edit.action_count == 2  # opened the editor, used the text
    _, reject = latest[2]
    assert (reject.reason, reject.comment) == ("inaccurate", "Trend already in the visit note")
    assert reject.action_count == 3  # opened the panel, chose a reason, rejected
    _, flag = latest[3]
    assert (flag.reason, flag.comment) == ("unsafe", "Plan names a drug the patient is allergic to")
    assert flag.action_count == 2
    # Accept all is one action: each suggestion it decided records just that one.
    assert [d.action_count for _, d in latest[4:]] == [1] * (total - 4)
    assert all(len(ds) == 1 for _, ds in recorded), "one decision each, none twice"

    (note,) = notes_in_chart(stack, "pt-01")
    # A clinical note: sections, not card titles or engine labels.
    assert note.startswith("Subjective\n")
    assert not any(title in note for title in titles)
    assert "rule-based" not in note
    assert "Reviewed with the patient today." in note
    # Rejected and flagged cards stay out (what only they said is not in the note).
    used = {
        st["text"]
        for i, (row, _) in enumerate(recorded)
        if i not in (2, 3)
        for st in row.statements
    }
    # Whole lines: a rejected block's head ("Essential (primary) hypertension") is the start
    # of the accepted problem summary's line ("…, onset 2018-03-18"), not that line.
    note_lines = {line.strip() for line in note.splitlines()}
    for row, _ in recorded[2:4]:
        for st in row.statements:
            assert st["text"] in used or f"- {st['text']}" not in note_lines
    assert sidebar.locator("#note-text").text_content() == note  # the preview was the note
    app_errors = [
        m for m in page.console_messages if m[0] == "error" and m[2].startswith(stack.app_url)
    ]
    assert not app_errors


def test_patient_instructions_are_saved_as_a_separate_after_visit_summary(page, stack: Stack):
    """The note holds no sentence to the patient; ticking the choice at the save step
    writes the instructions as their own DocumentReference (LOINC 69730-0)."""
    sidebar = open_chart(page, stack, "pt-01")
    for kind in ("problem_summary", "patient_instructions"):
        card = open_card(sidebar.locator(f"#suggestion-list > .card[data-kind={kind}]").first)
        card.locator("button.accept").click()
        expect(card).to_have_attribute("data-decision", "accept")
    avs = sidebar.locator("#avs")
    expect(avs).to_be_visible()
    expect(sidebar.locator("#avs-grade")).to_contain_text("reading grade")
    sidebar.locator("#note-preview > summary").click()
    expect(sidebar.locator("#note-text")).to_contain_text("Subjective")
    expect(sidebar.locator("#note-text")).not_to_contain_text("You ")
    sidebar.locator("#avs-save").check()
    screenshot(page, "sidebar_avs_choice.png", clip=sidebar_clip(page))
    sidebar.locator("#save-note").click()
    status = sidebar.locator("#save-status[data-kind=ok]")
    expect(status).to_contain_text("After-visit summary: in the chart", timeout=20_000)

    docs = requests.get(
        f"{stack.ehr_url}/_sandbox/resources/DocumentReference",
        params={"patient": "pt-01"},
        timeout=10,
    ).json()
    by_type = {
        d["type"]["coding"][0]["code"]: d for d in docs if d.get("docStatus") == "preliminary"
    }
    note = base64.b64decode(by_type["11506-3"]["content"][0]["attachment"]["data"]).decode()
    summary = base64.b64decode(by_type["69730-0"]["content"][0]["attachment"]["data"]).decode()
    assert "You " not in note and summary.startswith("- You ")
    assert sidebar.locator("#avs-text").text_content() == summary  # its preview was it
    # Saved as chosen: nothing left to save; unticking does not take the summary back.
    expect(sidebar.locator("#save-note")).to_be_disabled()
    sidebar.locator("#avs-save").uncheck()
    expect(sidebar.locator("#save-note")).to_be_disabled()


# -- an inline edit, a coded rejection --------------------------------------------------------


def test_inline_edit_keeps_a_word_diff_and_records_the_final_text(page, stack: Stack):
    sidebar = open_chart(page, stack, "pt-01")
    card = open_card(sidebar.locator("#suggestion-list > .card").first)
    original = card.locator(".statement-text").first.inner_text()
    card.locator("button.edit").click()
    textarea = card.locator(".card-edit textarea")
    suggested = textarea.input_value()
    edited = suggested.replace("hypertension", "hypertension (well controlled)", 1)
    assert edited != suggested
    textarea.fill(edited)
    card.locator("button.save-edit").click()
    expect(card).to_have_attribute("data-decision", "edit")
    expect(card.locator(".decision-badge")).to_have_text("Edited")
    expect(card.locator(".edited-text")).to_have_text(edited)
    assert original in suggested

    card.locator("button.toggle-diff").click()
    diff = card.locator(".diff")
    expect(diff).to_be_visible()
    expect(card.locator("button.toggle-diff")).to_have_attribute("aria-expanded", "true")
    expect(diff.locator("ins")).to_have_count(1)
    expect(diff.locator("ins")).to_contain_text(" (well controlled)")
    expect(diff.locator("del")).to_have_count(0)
    expect(diff.locator(".diff-summary")).to_have_text("2 words added, 0 removed")
    screenshot(page, "sidebar_edit_diff.png", clip=sidebar_clip(page))

    (row, (decision,)) = decisions(stack)[0]
    assert decision.action == "edit"
    assert decision.final_text == edited
    assert decision.edit_distance == len(" (well controlled)")

    sidebar.locator("#save-note").click()
    expect(sidebar.locator("#save-status[data-kind=ok]")).to_be_visible(timeout=20_000)
    (note,) = notes_in_chart(stack, "pt-01")
    assert note.startswith("Subjective\n") and row.title not in note
    assert "(well controlled)" in note
    assert sidebar.locator("#note-text").text_content() == note  # the preview was the note

    # Edited again after the save: the note is offered for saving again.
    expect(sidebar.locator("#save-note")).to_be_disabled()
    card.locator("button.edit").click()
    card.locator(".card-edit textarea").fill(edited + " Recheck in 3 months.")
    card.locator("button.save-edit").click()
    expect(card.locator(".edited-text")).to_contain_text("Recheck in 3 months.")
    expect(sidebar.locator("#save-label")).to_have_text("Save changes to chart")
    expect(sidebar.locator("#save-note")).to_be_enabled()


def test_reject_needs_a_coded_reason_and_keeps_the_comment(page, stack: Stack):
    sidebar = open_chart(page, stack, "pt-01")
    card = sidebar.locator("#suggestion-list > .card").nth(1)
    # A closed card shows its first line; its decisions show once it is opened.
    expect(card.locator("button.reject")).to_be_hidden()
    open_card(card).locator("button.reject").click()
    panel = card.locator(".card-reject")
    expect(panel.locator("legend")).to_have_text("Why reject it?")
    labels = panel.locator("label.reason")
    expect(labels).to_have_text(["Not relevant", "Inaccurate", "Incomplete", "Unsafe", "Other"])
    panel.locator("button.confirm-reject").click()
    expect(panel.locator(".field-error")).to_be_visible()
    expect(panel.locator("fieldset")).to_have_attribute("aria-invalid", "true")
    assert not decisions(stack)[1][1], "nothing recorded without a reason"

    panel.get_by_label("Incomplete").check()
    panel.get_by_label("Comment (optional)").fill("Misses the statin started last week")
    panel.locator("button.confirm-reject").click()
    expect(card).to_have_attribute("data-decision", "reject")
    expect(card.locator(".decision-badge")).to_have_text("Rejected: Incomplete")
    # Rejected cards fold to their heading until focused again.
    sidebar.locator("#suggestion-list > .card").nth(0).focus()
    expect(card.locator(".card-body")).to_be_hidden()

    (_, (decision,)) = decisions(stack)[1]
    assert decision.action == "reject"
    assert decision.reason == "incomplete"
    assert decision.comment == "Misses the statin started last week"
    assert decision.final_text is None

    flag_card = sidebar.locator("#suggestion-list > .card").nth(2)
    open_card(flag_card).locator("button.flag").click()
    expect(flag_card.locator(".card-flag")).to_contain_text("governance team's review queue")
    flag_card.get_by_label("What is unsafe about it? (optional)").fill("Wrong laterality")
    flag_card.locator("button.confirm-flag").click()
    expect(flag_card.locator(".decision-badge")).to_have_text("Flagged as unsafe")
    (_, (flag,)) = decisions(stack)[2]
    assert (flag.action, flag.reason, flag.comment) == ("flag", "unsafe", "Wrong laterality")
    screenshot(page, "sidebar_rejected_flagged.png", clip=sidebar_clip(page))


# -- sources in place --------------------------------------------------------------------------


def test_a_citation_opens_its_source_in_place_from_the_cached_chart(page, stack: Stack):
    sidebar = open_chart(page, stack, "pt-01")
    card = open_card(sidebar.locator("#suggestion-list > .card").first)
    chip = card.locator("button.citation", has_text="Observation").first
    label = chip.get_attribute("aria-label")
    assert label and label.startswith("Source: ")
    before = fhir_requests(stack)
    chip.click()
    expect(chip).to_have_attribute("aria-expanded", "true")
    source = card.locator(f"#{chip.get_attribute('aria-controls')}")
    expect(source.locator(".source-title")).to_be_visible()
    reference = source.locator(".source-ref").inner_text()
    assert reference.startswith("Observation/")

    # What the EHR holds for that Observation is what the panel shows.
    observation = next(
        o
        for o in requests.get(
            f"{stack.ehr_url}/_sandbox/resources/Observation",
            params={"patient": "pt-01"},
            timeout=10,
        ).json()
        if f"Observation/{o['id']}" == reference
    )
    fields = dict(
        zip(
            source.locator("dt").all_inner_texts(),
            source.locator("dd").all_inner_texts(),
            strict=True,
        )
    )
    assert fields["Status"] == observation["status"]
    assert fields["Date"] == observation["effectiveDateTime"][:10]
    coding = observation["code"]["coding"][0]
    assert f"{coding['system']}|{coding['code']}" in fields["Code"]
    if "valueQuantity" in observation:
        assert str(observation["valueQuantity"]["unit"]) in fields["Value"]
    else:
        assert "/" in fields["Value"]  # a blood pressure: systolic/diastolic
    screenshot(page, "sidebar_source_open.png", clip=sidebar_clip(page))
    # Opened from the app's copy of the chart: not one more request to the EHR.
    assert fhir_requests(stack) == before

    page.keyboard.press("Escape")
    expect(chip).to_have_attribute("aria-expanded", "false")
    expect(source).to_be_hidden()


# -- delivery state ----------------------------------------------------------------------------


def test_a_note_saved_while_the_ehr_is_down_says_it_will_retry_then_arrives(page, stack: Stack):
    sidebar = open_chart(page, stack, "pt-01")
    open_card(sidebar.locator("#suggestion-list > .card").first).locator("button.accept").click()
    expect(sidebar.locator("#suggestion-list > .card").first).to_have_attribute(
        "data-decision", "accept"
    )
    faults = f"{stack.ehr_url}/_sandbox/faults"
    requests.post(faults, json={"fail_next": 50, "status": 503}, timeout=10).raise_for_status()
    try:
        sidebar.locator("#save-note").click()
        pending = sidebar.locator("#save-status[data-kind=pending]")
        expect(pending).to_contain_text(
            "Saved here — the EHR did not answer, the app will retry", timeout=60_000
        )
        screenshot(page, "sidebar_note_pending.png")
    finally:
        requests.delete(faults, timeout=10)
    assert notes_in_chart(stack, "pt-01") == []
    stack.app.extensions["smartapp.outbox"].run_once(force=True)
    # The sidebar asks again every ~10 s while the note is pending.
    expect(sidebar.locator("#save-status[data-kind=ok]")).to_contain_text(
        "In the chart as a draft for you to sign", timeout=30_000
    )
    assert len(notes_in_chart(stack, "pt-01")) == 1


# -- a hostile chart ---------------------------------------------------------------------------


def test_markup_in_the_chart_renders_inert(page, stack: Stack):
    bundle = json.loads(HOSTILE_BUNDLE.read_text(encoding="utf-8"))
    loaded = requests.post(f"{stack.ehr_url}/_sandbox/patients", json=bundle, timeout=30)
    assert loaded.status_code == 201, loaded.text
    patient = loaded.json()["patient"]
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    sidebar = open_chart(page, stack, patient)
    frame = app_frame(page, stack)
    card = open_card(sidebar.locator("#suggestion-list > .card").first)
    expect(card.locator(".statement-text").first).to_contain_text(
        "Hypertension <script>alert('condition')</script>"
    )
    # Open every Observation source: their code texts carry <script> and <img onerror>.
    for chip in card.locator("button.citation").all():
        chip.click()
    sources = card.locator(".source .source-title")
    expect(sources.filter(has_text="<script>alert('bp')</script>Blood pressure")).to_have_count(1)
    card_texts = sidebar.locator(".card-title").all_inner_texts()
    assert any("<script>alert('condition')</script>" in t for t in card_texts)

    vitals = open_card(sidebar.locator("#suggestion-list > .card", has_text="HbA1c").first)
    for chip in vitals.locator("button.citation").all():
        chip.click()
    expect(
        vitals.locator(".source .source-title", has_text="HbA1c <img src=x onerror=alert('obs')>")
    ).to_have_count(1)
    screenshot(page, "sidebar_hostile_chart.png")

    # Nothing was parsed as markup: no injected element, only the app's own script.
    assert frame.locator("img").count() == 0
    scripts = frame.evaluate("[...document.scripts].map(s => s.getAttribute('src'))")
    assert scripts == ["/static/js/sidebar.js"]

    # The patient's name shows in the banner of a standalone launch (need_patient_banner).
    standalone = page.context.new_page()
    standalone.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    standalone.goto(f"{stack.app_url}/launch?iss={quote(stack.fhir_base, safe='')}")
    standalone.locator("#patient").select_option(patient)
    standalone.get_by_role("button", name="Sign in and allow").click()
    banner = standalone.locator("#patient-banner")
    expect(banner).to_be_visible(timeout=30_000)
    expect(banner.locator(".patient-name")).to_have_text(
        "Eve \"&\" <b>Bold</b> <script>alert('xss')</script>Mallory"
    )
    assert standalone.locator("#patient-banner b, #patient-banner script").count() == 0
    standalone.locator("#suggestion-list > .card").first.wait_for(timeout=30_000)
    screenshot(standalone, "sidebar_hostile_banner.png")
    assert dialogs == []


# -- the diff function, in the browser that runs it -------------------------------------------


def test_word_diff_rebuilds_both_texts_and_marks_only_the_changes(page, stack: Stack):
    open_chart(page, stack, "pt-01")
    frame = app_frame(page, stack)
    result = frame.evaluate(
        """async () => {
        const { diffWords } = await import("/static/js/diff.js");
        const cases = [
          ["BP 141/81 mmHg on 2026-09-27", "BP 141/81 mmHg on 2026-09-27, improving"],
          ["Start metformin 500 mg daily", "Start metformin 1000 mg twice daily"],
          ["the quick brown fox", "a slow brown dog"],
          ["unchanged", "unchanged"],
          ["", "all new"],
        ];
        return cases.map(([a, b]) => {
          const parts = diffWords(a, b);
          return {
            parts,
            before: parts.filter(p => p.op !== "ins").map(p => p.text).join("") === a,
            after: parts.filter(p => p.op !== "del").map(p => p.text).join("") === b,
          };
        });
    }"""
    )
    assert all(r["before"] and r["after"] for r in result)
    assert result[0]["parts"] == [
        {"op": "eq", "text": "BP 141/81 mmHg on 2026-09-27"},
        {"op": "ins", "text": ", improving"},
    ]
    assert result[1]["parts"] == [
        {"op": "eq", "text": "Start metformin "},
        {"op": "del", "text": "500"},
        {"op": "ins", "text": "1000"},
        {"op": "eq", "text": " mg"},
        {"op": "ins", "text": " twice"},
        {"op": "eq", "text": " daily"},
    ]
    assert result[2]["parts"] == [
        {"op": "del", "text": "the quick"},
        {"op": "ins", "text": "a slow"},
        {"op": "eq", "text": " brown "},
        {"op": "del", "text": "fox"},
        {"op": "ins", "text": "dog"},
    ]
    assert result[3]["parts"] == [{"op": "eq", "text": "unchanged"}]
    assert result[4]["parts"] == [{"op": "ins", "text": "all new"}]


# -- screenshots at the sidebar's widths --------------------------------------------------------


@pytest.mark.parametrize("width", [320, 480])
def test_sidebar_fits_narrow_widths(chromium, stack: Stack, width: int):
    context = chromium.new_context(viewport={"width": width, "height": 900})
    try:
        page = context.new_page()
        minted = requests.post(
            f"{stack.ehr_url}/_sandbox/launch", json={"patient": "pt-01"}, timeout=10
        ).json()
        page.goto(minted["launch_url"])
        page.locator("#suggestion-list > .card").first.wait_for(timeout=30_000)
        # Nothing wider than the sidebar: no sideways scrolling.
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        screenshot(page, f"sidebar_{width}px.png")
        first = page.locator("#suggestion-list > .card").first
        first.locator(".card-toggle").click()
        first.locator("button.citation").first.click()
        page.locator(".source .source-title").first.wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        screenshot(page, f"sidebar_{width}px_source.png")
    finally:
        context.close()


# -- what each suggestion says about itself, and the load states ------------------------------


def test_engine_fallback_unverified_and_not_enabled_are_shown_honestly(page, stack: Stack):
    """The engine line, an LLM fallback, unverified statements and kinds left out of the
    rollout, as the sidebar draws them (the payload is the server's, with those fields set)."""
    state = {"calls": 0}

    def suggestions(route: Any) -> None:
        state["calls"] += 1
        if state["calls"] == 1:
            # The first load fails as the app says a down EHR fails: an error and a retry.
            route.fulfill(
                status=503,
                json={"error": {"code": "ehr_unavailable", "message": "The EHR is not answering."}},
            )
            return
        payload = route.fetch().json()
        first, second = payload["suggestions"][0], payload["suggestions"][1]
        first["engine"] = {"name": "llm", "version": "clinical-notes-8b@2026-05"}
        first["statements"][0]["verified"] = False
        first["statements"][0]["issues"] = ["The cited Condition has no onset date 2018-03-18"]
        second["engine"] = {
            "name": "builtin-rules",
            "version": "0.1.0+rules.1",
            "ruleBased": True,
            "fallbackReason": "the LLM timed out; showing rule-based suggestions",
        }
        payload["notEnabled"] = [
            {"kind": "care_gaps", "title": "Care gaps", "reason": "Not enabled for you yet."}
        ]
        payload["chart"]["problems"] = [
            {
                "code": "invalid_resource",
                "resourceType": "Observation",
                "detail": "2 Observation resources failed validation and were skipped",
                "count": 2,
            }
        ]
        payload["chart"]["notGranted"] = ["Immunization"]
        route.fulfill(json=payload)

    page.route("**/api/suggestions", suggestions)
    page.goto(f"{stack.ehr_url}/patients/pt-01")
    sidebar = page.frame_locator("iframe#smart-app")
    error = sidebar.locator("#load-error")
    expect(error).to_contain_text("The EHR is not answering.")
    expect(sidebar.locator("#retry")).to_be_focused()
    screenshot(page, "sidebar_load_error.png")
    page.keyboard.press("Enter")  # "Try again"

    cards = sidebar.locator("#suggestion-list > .card")
    expect(cards.first).to_be_visible(timeout=30_000)
    expect(error).to_be_hidden()
    ai = cards.nth(0)
    expect(ai.locator(".engine .badge")).to_have_text("AI-generated")
    expect(ai.locator(".engine-name")).to_have_text("llm clinical-notes-8b@2026-05")
    unverified = ai.locator(".statement.unverified")
    expect(unverified).to_have_count(1)
    expect(unverified.locator(".unverified-note")).to_have_text(
        "Unverified — check against the chart"
    )
    expect(unverified.locator(".issues li")).to_have_text(
        ["The cited Condition has no onset date 2018-03-18"]
    )
    rules = cards.nth(1)
    expect(rules.locator(".engine .badge")).to_have_text("Rule-based")
    expect(rules.locator(".fallback")).to_have_text(
        "AI draft unavailable: the LLM timed out; showing rule-based suggestions"
    )
    expect(cards.nth(2).locator(".fallback")).to_have_count(0)
    expect(sidebar.locator("#not-enabled")).to_contain_text("Care gaps — Not enabled for you yet.")
    status = sidebar.locator("#chart-status")
    expect(status).to_contain_text("Chart read at")
    expect(status).to_contain_text("not permitted by this launch: Immunization")
    expect(status.locator("summary")).to_have_text("2 items skipped")
    status.locator("summary").click()
    expect(status.locator("li")).to_have_text(
        ["Observation: 2 Observation resources failed validation and were skipped (2)"]
    )
    screenshot(page, "sidebar_engines.png", clip=sidebar_clip(page))


def test_without_write_permission_the_note_is_not_offered(page, stack: Stack):
    def context(route: Any) -> None:
        payload = route.fetch().json()
        payload["canWriteNotes"] = False  # as when patient/DocumentReference.c was not granted
        route.fulfill(json=payload)

    saves: list[str] = []
    page.route("**/api/context", context)
    page.on("request", lambda r: r.url.endswith("/api/note") and saves.append(r.method))
    sidebar = open_chart(page, stack, "pt-01")
    sidebar.locator("#suggestion-list > .card").first.focus()
    page.keyboard.press("a")
    expect(sidebar.locator("#suggestion-list > .card").first).to_have_attribute(
        "data-decision", "accept"
    )
    expect(sidebar.locator("#save-note")).to_be_hidden()
    expect(sidebar.locator("#save-status")).to_contain_text("not allowed to write notes")
    expect(sidebar.locator("#note-count")).to_have_text("1 section")
    page.keyboard.press("s")
    page.wait_for_timeout(300)
    assert saves == []


# -- unsaved text ----------------------------------------------------------------------------


def kept_drafts(frame: Any) -> dict[str, list[str]]:
    """The sidebar's own keys in the frame's sessionStorage and localStorage."""
    return dict(
        frame.evaluate(
            """() => ({
              session: Object.keys(sessionStorage).filter((k) => k.startsWith("smartapp.")),
              local: Object.keys(localStorage),
            })"""
        )
    )


def reload_frame(page: Any, stack: Stack) -> Any:
    """Reload the sidebar's frame alone (the same launch), and wait for its cards again."""
    frame = app_frame(page, stack)
    frame.evaluate("() => { window.beforeReload = true; }")
    frame.goto(frame.url)
    sidebar = page.frame_locator("iframe#smart-app")
    sidebar.locator("#suggestion-list > .card").first.wait_for(timeout=30_000)
    assert frame.evaluate("() => window.beforeReload === undefined"), "the frame was not reloaded"
    return sidebar


@pytest.fixture
def storage_allowed(chromium, stack: Stack, tmp_path: Path) -> Iterator[Any]:
    """A page whose Chromium profile lets the app keep storage inside the EHR's frame.

    This Chromium denies a cross-site frame its sessionStorage by default (third-party
    cookies blocked), as many embedded browsers do; an EHR that lets the app's origin keep
    cookies in its frame (a site exception, an enterprise policy) gives it storage too, as
    a standalone launch or an app opened in its own window has.
    """
    from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS

    origin = lambda url: "://".join(urlsplit(url)[:2])  # noqa: E731
    profile = tmp_path / "chromium-profile"
    (profile / "Default").mkdir(parents=True)
    pattern = f"{origin(stack.app_url)},{origin(stack.ehr_url)}"
    # Content setting 1 = allow, for the app's origin (primary) inside the EHR's (secondary).
    allowed = {"cookies": {pattern: {"setting": 1}}}
    prefs = {"profile": {"content_settings": {"exceptions": allowed}}}
    (profile / "Default" / "Preferences").write_text(json.dumps(prefs), encoding="utf-8")
    context = chromium.browser_type.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        args=CHROMIUM_ARGS,
        headless=True,
        viewport={"width": 1400, "height": 1000},
    )
    yield context.pages[0] if context.pages else context.new_page()
    context.close()


def test_an_unsaved_edit_survives_a_reload_and_goes_once_submitted(storage_allowed, stack: Stack):
    page = storage_allowed
    sidebar = open_chart(page, stack, "pt-01")
    card = open_card(sidebar.locator("#suggestion-list > .card").first)
    card.locator("button.edit").click()
    textarea = card.locator(".card-edit textarea")
    edited = textarea.input_value() + " Recheck blood pressure in 2 weeks."
    textarea.fill(edited)
    assert kept_drafts(app_frame(page, stack))["local"] == [], "never in localStorage"

    # The frame reloads (same launch): the editor is open again with the text, and says so.
    sidebar = reload_frame(page, stack)
    card = sidebar.locator("#suggestion-list > .card").first
    expect(card.locator(".card-edit")).to_be_visible()
    expect(card.locator(".card-edit textarea")).to_have_value(edited)
    expect(card.locator(".card-edit .kept-notice")).to_have_text("Your unsaved edit was kept.")
    assert not decisions(stack)[0][1], "nothing was recorded by the reload"

    # The EHR's page reloads: a new launch of the same chart takes the text over.
    page.reload()
    sidebar = page.frame_locator("iframe#smart-app")
    card = sidebar.locator("#suggestion-list > .card").first
    expect(card.locator(".card-edit textarea")).to_have_value(edited, timeout=30_000)
    expect(card.locator(".card-edit .kept-notice")).to_be_visible()
    assert len(kept_drafts(app_frame(page, stack))["session"]) == 1, "one copy, this launch's"

    card.locator("button.save-edit").click()
    expect(card).to_have_attribute("data-decision", "edit")
    expect(card.locator(".edited-text")).to_have_text(edited)
    assert kept_drafts(app_frame(page, stack)) == {"session": [], "local": []}

    # Submitted, then reloaded: nothing stale comes back.
    sidebar = reload_frame(page, stack)
    card = sidebar.locator("#suggestion-list > .card").first
    expect(card).to_have_attribute("data-decision", "edit")
    expect(card.locator(".card-edit")).to_be_hidden()
    expect(sidebar.locator(".kept-notice:visible")).to_have_count(0)
    ((_, (decision,)),) = [d for d in decisions(stack) if d[1]]  # one decision, the edit
    assert decision.final_text == edited


def test_where_the_frame_has_no_storage_leaving_asks_before_losing_the_text(page, stack: Stack):
    sidebar = open_chart(page, stack, "pt-01")
    frame = app_frame(page, stack)
    assert frame.evaluate(
        "() => { try { sessionStorage.length; return false; } catch (e) { return true; } }"
    ), "this Chromium denies the cross-site frame its storage"
    card = open_card(sidebar.locator("#suggestion-list > .card").first)
    card.locator("button.edit").click()
    textarea = card.locator(".card-edit textarea")
    textarea.press("End")
    # Typed, not filled: the frame then has the user activation a beforeunload prompt needs.
    textarea.press_sequentially(" Recheck in 2 weeks.")
    asked: list[str] = []

    def leave(dialog: Any) -> None:
        asked.append(dialog.type)
        dialog.accept()

    page.on("dialog", leave)
    page.close(run_before_unload=True)
    if not asked:
        page.wait_for_event("close")
    assert asked == ["beforeunload"]

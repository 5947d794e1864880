"""The phased-rollout walkthrough's clinicians, in Chromium (README: "A phased rollout in the
sandbox"): each of the sandbox's four clinicians opens three charts and saves a note, one
flags a suggestion; then the governance dashboard is saved as a PNG, signed in as the
sandbox's administrator.

    python docs/walkthrough/rollout_demo.py --ehr http://localhost:8400 --out dashboard.png

Needs Playwright and Chromium (`make chromium`); the sandbox running with
`[governance] pulse_every = 1` (the pulse is answered when it is asked).
"""

from __future__ import annotations

import argparse

from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PLAN = {
    "dr-ada-lovelace": ["pt-01", "pt-02", "pt-03"],
    "dr-rene-laennec": ["pt-04", "pt-05", "pt-06"],
    "np-mary-seacole": ["pt-07", "pt-08", "pt-09"],
    "dr-william-osler": ["pt-10", "pt-11", "pt-12"],
}
ADMIN = "dr-rene-laennec"


def sign_in(page: Page, ehr: str, user: str) -> None:
    """The sandbox EHR's user switcher (top right)."""
    page.goto(f"{ehr}/")
    page.select_option("#ehr-user", user)
    page.get_by_role("button", name="Switch user").click()


def save_note(
    page: Page, ehr: str, patient: str, *, edit: bool, flag: bool, pulse: tuple[int, int]
) -> None:
    """Open the chart, decide by keyboard (flag, edit, accept), save, answer the pulse."""
    page.goto(f"{ehr}/patients/{patient}")
    sidebar = page.frame_locator("iframe#smart-app")
    cards = sidebar.locator("#suggestion-list > .card")
    cards.first.wait_for(timeout=60_000)
    cards.first.focus()
    if flag:
        page.keyboard.press("f")
        sidebar.locator(".card-flag textarea").first.fill(
            "The summary leaves out the current dose."
        )
        page.keyboard.press("Control+Enter")
        expect(cards.first).to_have_attribute("data-decision", "flag")
        cards.nth(1).focus()
    decided = sidebar.locator('#suggestion-list > .card:not([data-decision=""])')
    before = decided.count()
    if edit:
        page.keyboard.press("e")
        page.keyboard.press("End")
        page.keyboard.type(" Reviewed with the patient.")
        page.keyboard.press("Control+Enter")
        before += 1
        expect(decided).to_have_count(before)
    page.keyboard.press("a")
    expect(decided).to_have_count(before + 1)
    expect(sidebar.locator("#save-note")).to_be_enabled()  # the preview has the note
    page.keyboard.press("s")
    status = sidebar.locator("#save-status")
    expect(status).not_to_be_empty(timeout=30_000)
    expect(status, f"{patient}: the note was not saved").to_have_attribute(
        "data-kind", "ok", timeout=30_000
    )
    box = sidebar.locator("#pulse")
    if box.is_visible():
        box.locator("fieldset[data-question=savedTime] input").nth(pulse[0] - 1).check()
        box.locator("fieldset[data-question=checking] input").nth(pulse[1] - 1).check()
        box.get_by_role("button", name="Send").click()
        expect(box).to_contain_text("Thank you")


def dashboard(page: Page, ehr: str, app: str, out: str) -> None:
    sign_in(page, ehr, ADMIN)
    page.goto(f"{app}/admin")
    page.get_by_role("button", name="Sign in with").click()
    page.get_by_role("button", name="Sign in and allow").click()
    expect(page).to_have_url(f"{app}/admin")
    page.screenshot(path=out, full_page=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ehr", default="http://localhost:8400")
    parser.add_argument("--app", help="the app's URL (default: the EHR's port + 1 on 127.0.0.1)")
    parser.add_argument("--out", default="dashboard.png")
    parser.add_argument("--dashboard-only", action="store_true")
    args = parser.parse_args()
    app = args.app or "http://127.0.0.1:" + str(int(args.ehr.rsplit(":", 1)[1]) + 1)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        if not args.dashboard_only:
            for n, (user, patients) in enumerate(PLAN.items()):
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                page = context.new_page()
                sign_in(page, args.ehr, user)
                for k, patient in enumerate(patients):
                    save_note(
                        page,
                        args.ehr,
                        patient,
                        edit=k != 1,
                        flag=user == "dr-ada-lovelace" and k == 2,
                        pulse=(3 + (n + k) % 3, 1 + (n * k) % 3),
                    )
                    print(f"{user}: note saved for {patient}", flush=True)
                context.close()
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        dashboard(context.new_page(), args.ehr, app, args.out)
        print(f"dashboard: {args.out}")
        browser.close()


if __name__ == "__main__":
    main()

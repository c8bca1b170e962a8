"""The dashboard in a real browser (issue 24): headless Chromium, driven by Playwright, against
a real ``dormant serve``. A requester signs in with a token and files a deletion request from
the form; it runs, its verdict is a warning and its version waits. A reviewer signs in, opens
it from the overview, approves it with a comment and sees the version promoted; the ledger
names the reviewer. Screenshots of each step go to ``runs/test-artifacts/dashboard``."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_helpers import client, make_token, served_store

from dormant.requests import Ledger
from dormant.service.local import LocalService

pytestmark = pytest.mark.slow
SHOTS = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts" / "dashboard"


def test_a_reviewer_approves_a_warned_request_in_the_browser(tmp_path, chromium):
    from playwright.sync_api import expect, sync_playwright

    base = served_store(tmp_path)
    store = base["store"]
    fides = make_token(store, "requester", "fides")
    dpo = make_token(store, "reviewer", "dpo@example.org")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with LocalService(store, "--policy", str(base["policy"])) as svc, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})

        def sign_in(token: dict) -> None:
            page.goto(svc.url + "/ui")
            expect(page).to_have_url(svc.url + "/ui/login")  # no session: to the sign-in page
            page.get_by_label("Access token").fill(token["token"])
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_text(f"Signed in as {token['name']}")).to_be_visible()

        # a requester files a request from the form
        page.goto(svc.url + "/ui/login")
        page.screenshot(path=SHOTS / "1-sign-in.png")
        sign_in(fides)
        page.get_by_role("link", name="File a request").click()
        page.get_by_label("Training ids to delete").fill("12, twelve")
        page.get_by_label("Who asked").fill("alice@example.org")
        page.get_by_label("Why").fill("GDPR art. 17 erasure")
        page.get_by_role("button", name="File the request").click()
        expect(page.get_by_role("alert")).to_contain_text("whole numbers")  # and nothing filed
        page.get_by_label("Training ids to delete").fill("100, 101, 102\n103 104 105 106 107")
        page.get_by_label("Who asked").fill("alice@example.org")
        page.get_by_label("Why").fill("GDPR art. 17 erasure")
        page.screenshot(path=SHOTS / "2-file-a-request.png")
        page.get_by_role("button", name="File the request").click()
        expect(page.locator("#status")).to_have_text("finished", timeout=120_000)
        rid = page.url.rsplit("/", 1)[1]
        expect(page.locator("#verdict")).to_contain_text("warn")
        expect(page.locator("#promoted")).to_contain_text("not in use")
        expect(page.get_by_text("Only a reviewer can sign off.")).to_be_visible()
        page.get_by_role("button", name="Sign out").click()

        # a reviewer finds it in the overview and approves it
        sign_in(dpo)
        expect(page.locator("#ledger")).to_contain_text("intact")
        page.screenshot(path=SHOTS / "3-overview.png", full_page=True)
        page.get_by_role("link", name=rid[:8]).click()
        expect(page.locator("#signoff")).to_contain_text("A warning kept")
        page.screenshot(path=SHOTS / "4-warned-request.png", full_page=True)
        page.get_by_label("Your reason (recorded in the ledger)").fill(
            "Read the report: the warnings are insufficient evidence only")
        page.get_by_role("button", name="Approve and promote").click()
        expect(page.get_by_role("status")).to_have_text("The version was approved.")
        expect(page.locator("#promoted")).to_contain_text("promoted: in use")
        expect(page.locator("#signed-by")).to_have_text(f"dpo@example.org (token {dpo['id']})")
        page.screenshot(path=SHOTS / "5-approved.png", full_page=True)
        page.goto(svc.url + "/ui/models/digits")
        expect(page.locator("table")).to_contain_text("current")
        page.screenshot(path=SHOTS / "6-model.png", full_page=True)
        browser.close()
        model = client(svc.url, dpo).get("/models/digits").json()
    row = Ledger(store / "ledger.sqlite").entries(kind="version-approved")[-1]
    assert row.request_id == rid and row.payload["by"].startswith("dpo@example.org (token ")
    assert model["current_version"] == row.payload["version"] == 2
    assert all((SHOTS / f).stat().st_size > 10_000 for f in
               ("1-sign-in.png", "3-overview.png", "4-warned-request.png", "5-approved.png"))

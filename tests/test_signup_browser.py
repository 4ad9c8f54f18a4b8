"""The sign-up page in real headless Chromium (Debian's, driven by Playwright): with the
vendored ALTCHA widget solving the puzzle, and with JavaScript off (the wait path)."""

from __future__ import annotations

import shutil
import urllib.parse

import httpx
import pytest

from distillguard.testing.mailbox import Mailbox, smtp_server

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not "
                                "installed (.ci/run installs it)")


@pytest.fixture
def site(live_server):
    playwright = pytest.importorskip("playwright.sync_api")
    with smtp_server() as mailbox, playwright.sync_playwright() as p:
        url, _ = live_server(signup_mode="verify", smtp_url=mailbox.url,
                             public_url="https://api.example.test", signup_pow_cost=20,
                             signup_nojs_wait=0.5)
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-background-networking"])
        try:
            yield url, mailbox, browser
        finally:
            browser.close()


def _local(url: str, link: str) -> str:
    parts = urllib.parse.urlsplit(link)
    return f"{url}{parts.path}?{parts.query}"


def test_sign_up_in_the_browser_gives_a_working_key(site, tmp_path):
    url, mailbox, browser = site
    page = browser.new_page()
    page.goto(f"{url}/signup")
    page.get_by_label("Email address").fill("browser.user@example.org")
    page.get_by_text("I'm not a robot").click()  # the label, as a person clicks it
    # The widget puts the solved payload into a hidden field of the form.
    page.wait_for_function("() => { const f = document.querySelector("
                           "'input[name=altcha]'); return f && f.value.length > 20; }",
                           timeout=20_000)
    page.screenshot(path=str(tmp_path / "signup-solved.png"), full_page=True)
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_selector("text=Check your inbox")
    (mail,) = mailbox.wait(1)
    page.goto(_local(url, Mailbox.links(mail)[0]))
    key = page.locator("#api-key").inner_text().strip()
    page.screenshot(path=str(tmp_path / "signup-key.png"), full_page=True)
    assert key.startswith("sk-dg-")
    r = httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200
    page.reload()  # the link works once
    assert "does not work" in page.content()


def test_sign_up_with_javascript_off_waits_instead(site, tmp_path):
    url, mailbox, browser = site
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(f"{url}/signup")
    assert page.locator("noscript").count() == 1
    page.get_by_label("Email address").fill("no.script@example.org")
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_selector("text=please wait")
    page.screenshot(path=str(tmp_path / "signup-nojs-wait.png"), full_page=True)
    page.wait_for_timeout(600)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_selector("text=Check your inbox")
    assert mailbox.wait(1)[0]["To"] == "no.script@example.org"
    context.close()

"""The console in a real headless Chromium (Debian's, driven by Playwright), against a
real gateway that ``simulate --target`` fills with a small scenario's traffic.

The analyst's path: log in, open the top-risk account, read its reason, block it; the
account's next API request gets 403. Also refused: a wrong token, a POST without the
CSRF token, an expired session. Every page is photographed at 1280x800 and 390x844 into
``$DG_CONSOLE_SHOTS`` (default: the test's tmp folder), and no page may be wider than the
phone's screen.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from conftest import ADMIN_TOKEN

playwright_sync = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not "
                                "installed (.ci/run installs it)")

SCENARIO = """
[scenario]
name = "browser"
description = "forty casual users and one bulk harvester"
duration = "12h"
seed = 3
detection_interval = "5m"
[[population]]
kind = "casual"
accounts = 40
[[campaign]]
strategy = "bulk_harvester"
target = 200
start = "2h"
"""
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


@pytest.fixture
def filled(live_server, tmp_path):
    """A running gateway after a small scenario was sent to it; (url, gateway, run)."""
    from distillguard.simulate.live import TargetRun
    from distillguard.simulate.runner import Traffic
    from distillguard.simulate.scenario import load_scenario

    url, gateway = live_server(trust_forwarded_for=True, detection_interval=0.5,
                               signup_mode="open", public_url="https://api.example.test",
                               signup_pow_cost=1)
    path = tmp_path / "browser.toml"
    path.write_text(SCENARIO)
    traffic = Traffic.generate(load_scenario(str(path)))
    run = TargetRun(traffic, url, ADMIN_TOKEN, duration_s=4.0, progress=False)
    run.run()
    harvester = next(a.name for a in traffic.accounts if a.campaign is not None)
    deadline = time.monotonic() + 30
    while True:  # detection rounds run every half second, off the request path
        top = gateway.detection.ranked(1)
        if top and top[0].account == harvester and gateway.detection.refreshed_at:
            break
        assert time.monotonic() < deadline, f"harvester not ranked first: {top}"
        time.sleep(0.3)
    asyncio.run(_sign_ups(url))
    report = gateway.settings.data_path / "forensics" / "suspect-student"
    report.mkdir(parents=True)
    (report / "evidence.json").write_text(json.dumps({
        "verdict": "learned from our outputs", "p_value": 2.4e-12, "alpha": 1e-3,
        "p_value_correction": "Bonferroni over 2 tests", "created": "2026-12-01T21:00:00Z",
        "suspect": {"kind": "corpus", "path": "student-outputs.jsonl"},
        "command": "distillguard forensics corpus student-outputs.jsonl",
        "key_ids": ["wk_1a2b"], "tests": [
            {"name": "corpus", "p_value": 1.2e-12, "tokens_scored": 48211,
             "empirical_p_value": 0.0099}]}))
    return url, gateway, run, harvester


async def _sign_ups(url: str) -> None:
    """Two sign-ups for the overview's funnel: one key issued, one screened out."""
    from test_signup import sign_up

    async with httpx.AsyncClient(base_url=url) as http:
        assert (await sign_up(http, "new-user@example.org")).status_code == 201
        assert (await sign_up(http, "x@sharklasers.com")).status_code == 400


@pytest.fixture
def browser():
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-background-networking",
                                    "--disable-dev-shm-usage"])
        yield b
        b.close()


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("DG_CONSOLE_SHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _login(page, url: str, token: str = ADMIN_TOKEN) -> None:
    page.goto(url + "/console/login")
    page.fill("#secret", token)
    page.click("button[type=submit]")


def test_analyst_finds_and_blocks_the_harvester(filled, browser, tmp_path):
    url, gateway, run, harvester = filled
    shots = _shots(tmp_path)
    page = browser.new_page(viewport={"width": 1280, "height": 800})

    # A wrong token is refused and opens nothing.
    _login(page, url, "not-the-admin-token")
    assert "Wrong name, password or admin token" in page.inner_text("main")
    page.goto(url + "/console/accounts")
    assert page.url.startswith(url + "/console/login")

    _login(page, url)
    page.goto(url + "/console/accounts")
    first = page.locator("table.accounts tbody tr").first.locator("td a").first
    assert first.inner_text() == harvester
    first.click()
    page.wait_for_url(f"**/console/accounts/{harvester}")
    reason = page.locator("ol.reasons li").first.inner_text()
    assert len(reason) > 20, reason
    page.fill("#reason", "harvesting: " + reason[:80])
    page.click("button[value=block]")
    page.wait_for_selector(".notice")
    assert "Done: block" in page.inner_text(".notice")

    key = run.keys[harvester].result()
    r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 403 and r.json()["error"]["code"] == "account_blocked"
    entry = gateway.policy.audit(account=harvester)[0]
    assert entry.author == "analyst:admin" and entry.reason.startswith("harvesting: ")

    # A POST carrying the session cookie but no CSRF token is refused.
    other = next(a for a in run.traffic.accounts if a.campaign is None).name
    r = page.request.post(url + f"/console/accounts/{other}/action",
                          form={"kind": "block", "reason": "forged"})
    assert r.status == 403
    assert not [e for e in gateway.policy.audit(account=other)
                if e.author.startswith("analyst:")]

    page.goto(url + "/console/")
    funnel = page.locator("table.funnel").inner_text()
    assert "keys issued\t1" in funnel and "disposable domain\t1" in funnel, funnel

    # Every page at both sizes; none scrolls sideways on the phone.
    campaigns = gateway.detection.campaigns()
    pages = {"overview": "/console/", "accounts": "/console/accounts",
             "account": f"/console/accounts/{harvester}", "campaigns": "/console/campaigns",
             "forensics": "/console/forensics",
             "report": "/console/forensics/suspect-student", "audit": "/console/audit"}
    if campaigns:
        pages["campaign"] = f"/console/campaigns/{campaigns[0].campaign_id}"
    for size, (w, h) in SIZES.items():
        page.set_viewport_size({"width": w, "height": h})
        for name, path in pages.items():
            started = time.perf_counter()
            page.goto(url + path)
            assert page.url == url + path, f"{path} sent us to {page.url}"
            assert time.perf_counter() - started < 5
            page.screenshot(path=str(shots / f"{name}-{size}.png"), full_page=True)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= w + 1, f"{path} is {width} px wide at {w} px"
    ctx = browser.new_page(viewport={"width": 390, "height": 844})
    ctx.goto(url + "/console/login")
    ctx.screenshot(path=str(shots / "login-phone.png"), full_page=True)

    # An expired session is refused: age every session past its end, as time would.
    with sqlite3.connect(gateway.settings.data_path / "console.db") as db:
        db.execute("UPDATE sessions SET expires_at = 0")
    page.goto(url + "/console/accounts")
    assert page.url.startswith(url + "/console/login")
    r = page.request.post(url + f"/console/accounts/{other}/action",
                          form={"kind": "block", "reason": "late", "csrf": "x"})
    assert r.status == 403

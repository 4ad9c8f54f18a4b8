"""The console over HTTP in-process: log-in and its refusals, CSRF, session expiry,
acting on an account with the next API request refused, analysts from the CLI."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time

import pytest

from conftest import ADMIN_TOKEN
from distillguard.detection.pipeline import DetectionPipeline
from distillguard.policy.engine import PolicyEngine
from test_detection import harvester, population


async def _detected(harness_factory, **overrides):
    h = await harness_factory(**overrides)
    gateway = h.runtime
    if getattr(gateway, "detection", None) is None:
        gateway.detection = DetectionPipeline(gateway.settings, store=gateway.store)
    if getattr(gateway, "policy", None) is None:
        gateway.policy = PolicyEngine.from_settings(gateway.settings)
    for e in sorted(population(random.Random(2)) + harvester(), key=lambda e: e.ts):
        gateway.detection.observe(e)
    gateway.detection.refresh()
    return h


@pytest.fixture
async def console(harness_factory):
    return await _detected(harness_factory)


def by_analysts(h, account: str) -> list:
    """Audit entries an analyst made (detection's own rules may act meanwhile)."""
    return [e for e in h.runtime.policy.audit(account=account)
            if e.author.startswith("analyst:")]


def _field(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, f"no {name} field in the page"
    return m.group(1)


async def login(client, name: str = "", secret: str = ADMIN_TOKEN):
    page = await client.get("/console/login")
    return await client.post("/console/login", data={
        "login_token": _field(page.text, "login_token"), "name": name, "secret": secret,
        "next": "/console/accounts"})


async def test_admin_token_logs_in_and_cookie_is_strict(console):
    async with console.http() as client:
        r = await client.get("/console/accounts")
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
        r = await login(client)
        assert r.status_code == 303 and r.headers["location"] == "/console/accounts"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=" in cookie
        r = await client.get("/console/accounts")
        assert r.status_code == 200
        assert "default-src 'none'" in r.headers["content-security-policy"]
        first = re.search(r'<a href="/console/accounts/([^"]+)">', r.text).group(1)
        assert first == "harvest"


async def test_wrong_token_or_password_is_refused(console):
    async with console.http() as client:
        r = await login(client, secret="not-the-token")
        assert r.status_code == 403 and "Wrong name, password or admin token" in r.text
        assert "dg_console=" not in r.headers.get("set-cookie", "")
        r = await login(client, name="nobody", secret="whatever-long-enough")
        assert r.status_code == 403
        assert (await client.get("/console/")).status_code == 303


async def test_login_needs_the_forms_own_token(console):
    async with console.http() as client:
        r = await client.post("/console/login", data={"name": "", "secret": ADMIN_TOKEN})
        assert r.status_code == 403 and "dg_console=" not in r.headers.get("set-cookie", "")


async def test_block_from_the_console_refuses_the_next_api_request(console):
    key = console.key("harvest")
    async with console.http() as client:
        await login(client)
        page = await client.get("/console/accounts/harvest")
        assert page.status_code == 200 and "population median" in page.text
        assert 'value="block"' in page.text
        r = await client.post("/console/accounts/harvest/action", data={
            "csrf": _field(page.text, "csrf"), "kind": "block", "reason": "harvesting",
            "ttl": ""})
        assert r.status_code == 303
        page = await client.get(r.headers["location"])
        assert "Done: block" in page.text
    sdk = console.sdk(key)
    with pytest.raises(Exception) as err:
        await sdk.chat.completions.create(model="echo",
                                          messages=[{"role": "user", "content": "hi"}])
    assert getattr(err.value, "status_code", None) == 403
    entry = console.runtime.policy.audit(account="harvest")[0]
    assert (entry.author, entry.kind, entry.reason) == ("analyst:admin", "block", "harvesting")


async def test_post_without_csrf_is_refused_and_changes_nothing(console):
    async with console.http() as client:
        await login(client)
        r = await client.post("/console/accounts/harvest/action",
                              data={"kind": "block", "reason": "x"})
        assert r.status_code == 403 and "security token" in r.text
        r = await client.post("/console/accounts/harvest/action",
                              data={"kind": "block", "reason": "x", "csrf": "forged"})
        assert r.status_code == 403
    assert not by_analysts(console, "harvest")


async def test_reason_is_required(console):
    async with console.http() as client:
        await login(client)
        page = await client.get("/console/accounts/harvest")
        r = await client.post("/console/accounts/harvest/action", data={
            "csrf": _field(page.text, "csrf"), "kind": "block", "reason": "  "})
        assert r.status_code == 400 and "reason" in r.text
    assert not by_analysts(console, "harvest")


async def test_expired_session_is_refused(harness_factory):
    h = await _detected(harness_factory, console_session_ttl=1.0)
    async with h.http() as client:
        await login(client)
        page = await client.get("/console/accounts/harvest")
        assert page.status_code == 200
        csrf = _field(page.text, "csrf")
        time.sleep(1.1)
        assert (await client.get("/console/accounts/harvest")).status_code == 303
        r = await client.post("/console/accounts/harvest/action",
                              data={"csrf": csrf, "kind": "block", "reason": "late"})
        assert r.status_code == 403
    assert not by_analysts(h, "harvest")


def test_analysts_cli_creates_an_analyst_whose_actions_carry_their_name(tmp_path):
    data = str(tmp_path / "data")
    cmd = [sys.executable, "-m", "distillguard.cli", "--data-dir", data, "analysts"]
    r = subprocess.run([*cmd, "create", "ann"], input="correct horse battery\n",
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*cmd, "create", "bob"], input="short\n", capture_output=True,
                       text=True)
    assert r.returncode == 2 and "12 characters" in r.stderr
    listed = subprocess.run([*cmd, "list"], capture_output=True, text=True).stdout
    assert listed.startswith("ann\t")
    from distillguard.console.auth import AnalystStore

    store = AnalystStore(data)
    assert store.check_password("ann", "correct horse battery")
    assert not store.check_password("ann", "wrong horse battery")
    assert "correct horse" not in (tmp_path / "data" / "console.db").read_bytes().decode(
        "latin-1")


async def test_analyst_login_audits_under_their_name(console):
    from distillguard.console.auth import AnalystStore

    AnalystStore(console.runtime.settings.data_path).create("ann", "correct horse battery")
    async with console.http() as client:
        r = await login(client, name="ann", secret="correct horse battery")
        assert r.status_code == 303
        page = await client.get("/console/accounts/user3")
        r = await client.post("/console/accounts/user3/action", data={
            "csrf": _field(page.text, "csrf"), "kind": "throttle", "reason": "bursty",
            "rate_factor": "0.5", "ttl": "1h"})
        assert r.status_code == 303
        audit = await client.get("/console/audit")
        assert "analyst:ann" in audit.text and "bursty" in audit.text
    action = console.runtime.policy.current_action("user3")
    assert (action.kind, action.rate_factor, action.author) == ("throttle", 0.5, "analyst:ann")


async def test_every_page_renders(console, tmp_path):
    import json

    folder = console.runtime.settings.data_path / "forensics" / "suspect-a"
    folder.mkdir(parents=True)
    (folder / "evidence.json").write_text(json.dumps({
        "verdict": "learned from our outputs", "p_value": 1e-9, "alpha": 1e-3,
        "command": "distillguard forensics corpus x", "tests": [], "key_ids": ["wk1"]}))
    async with console.http() as client:
        await login(client)
        campaigns = console.runtime.detection.campaigns()
        pages = ["/console/", "/console/accounts?action=none&page=2",
                 "/console/accounts?signal=elicitation", "/console/campaigns",
                 "/console/forensics", "/console/forensics/suspect-a", "/console/audit"]
        pages += [f"/console/campaigns/{c.campaign_id}" for c in campaigns[:1]]
        for path in pages:
            r = await client.get(path)
            assert r.status_code == 200, path
        assert "learned from our outputs" in (await client.get("/console/forensics")).text
        assert (await client.get("/console/forensics/..%2F..")).status_code == 404
        assert (await client.get("/console/accounts?action=ban")).status_code == 400
        assert (await client.get("/console/accounts/nobody-here")).status_code == 404


async def test_wrong_tokens_lock_the_login_until_the_window_passes(harness_factory):
    from distillguard.clock import ManualClock

    clock = ManualClock(time.time())
    h = await harness_factory(clock=clock, console_login_failures=3,
                              console_login_window=600.0)
    async with h.http() as client:
        for _ in range(3):
            r = await login(client, secret="wrong-token-attempt")
            assert r.status_code == 403
        # Even the right token is refused now, with the wait in Retry-After.
        r = await login(client)
        assert r.status_code == 429 and "Too many failed log-ins" in r.text
        assert 590 <= int(r.headers["retry-after"]) <= 600
        assert "dg_console=" not in r.headers.get("set-cookie", "")
        clock.advance(clock() + 300)
        assert (await login(client)).status_code == 429
        clock.advance(clock() + 301)
        r = await login(client)
        assert r.status_code == 303 and "dg_console=" in r.headers["set-cookie"]
    entries = h.runtime.policy.audit(account="console:login")
    assert len(entries) == 3 and all(e.op == "console_login_failed" for e in entries)
    assert "failed log-in as admin from" in entries[0].reason
    assert "refused for now" in entries[0].reason
    assert not any("wrong-token-attempt" in e.reason for e in entries)


async def test_login_failures_count_per_name_across_addresses_and_per_address(
        harness_factory):
    from distillguard.console.auth import AnalystStore

    h = await harness_factory(trust_forwarded_for=True, console_login_failures=2)
    AnalystStore(h.runtime.settings.data_path).create("ann", "correct horse battery")
    async with h.http() as client:
        for i in range(2):  # two addresses guess ann's password
            client.headers["x-forwarded-for"] = f"198.51.100.{i}"
            assert (await login(client, "ann", "guess-number-one")).status_code == 403
        client.headers["x-forwarded-for"] = "198.51.100.9"
        assert (await login(client, "ann", "correct horse battery")).status_code == 429
        # The fresh address is not locked out for another name.
        assert (await login(client)).status_code == 303
        # One address guessing many names is stopped too.
        client.headers["x-forwarded-for"] = "2001:db8::1"
        for name in ("bob", "carol"):
            assert (await login(client, name, "guess-number-two")).status_code == 403
        client.headers["x-forwarded-for"] = "2001:db8::2"  # same /64
        assert (await login(client, "dave", "guess-number-three")).status_code == 429


async def test_guesses_from_elsewhere_cannot_lock_a_known_browser_out(harness_factory):
    h = await harness_factory(trust_forwarded_for=True, console_login_failures=2)
    async with h.http() as analyst, h.http() as attacker, h.http() as stranger:
        analyst.headers["x-forwarded-for"] = "192.0.2.7"
        r = await login(analyst)
        assert r.status_code == 303 and "dg_console_device=" in r.headers["set-cookie"]
        for i in range(3):  # someone else spends the admin token's failures
            attacker.headers["x-forwarded-for"] = f"198.51.100.{i}"
            await login(attacker, secret="wrong-token-attempt")
        stranger.headers["x-forwarded-for"] = "203.0.113.5"
        assert (await login(stranger)).status_code == 429
        # A forged device cookie is worth nothing.
        stranger.cookies.set("dg_console_device", "admin:99999999999:" + "0" * 32,
                             path="/console/")
        assert (await login(stranger)).status_code == 429
        # The analyst's browser logged in as admin before, so the name's lock spares it.
        assert (await login(analyst)).status_code == 303
        # An address's own failures still lock even a known browser.
        for name in ("bob", "carol"):
            attacker.headers["x-forwarded-for"] = "198.51.100.77"
            await login(attacker, name, "guess-number-one")
        analyst.headers["x-forwarded-for"] = "198.51.100.77"
        assert (await login(analyst)).status_code == 429


def test_login_throttle_memory_is_bounded_and_rotation_keeps_a_names_count():
    from distillguard.clock import ManualClock
    from distillguard.console.auth import LoginThrottle

    clock = ManualClock(1000.0)
    throttle = LoginThrottle(3, 60.0, clock=clock, max_keys=50, max_audits=4)
    for i in range(5000):  # rotating addresses and names
        assert throttle.begin(f"addr{i}", f"name{i}") is None
    addresses, names = throttle._failures
    assert len(addresses) == len(names) == 50
    for i in range(3):
        assert throttle.begin(f"10.0.0.{i}", "ann") is None
    assert all(len(t) <= 3 for t in (*addresses.values(), *names.values()))
    # A name under attack stays recent while it is tried, though 45 other names (fewer
    # than the table holds) fail between two tries, again and again.
    for round_ in range(5):
        for i in range(45):
            throttle.begin(f"r{round_}-{i}", f"n{round_}-{i}")
        assert throttle.begin(f"try{round_}", "ann") is not None
    assert [throttle.may_audit() for _ in range(6)] == [True] * 4 + [False] * 2
    clock.advance(clock() + 61)
    assert throttle.may_audit()
    assert throttle.begin("try-later", "ann") is None


async def test_signup_funnel_on_the_overview_and_the_admin_api(harness_factory, tmp_path):
    from distillguard.testing.mailbox import smtp_server
    from test_signup import ADMIN, FAST, client, sign_up, token_of

    domains = tmp_path / "domains.txt"
    domains.write_text("deny evil.example\n")
    with smtp_server() as mailbox:
        h = await harness_factory(**FAST, signup_mode="verify", smtp_url=mailbox.url,
                                  signup_velocity_prefix=4, signup_domains_file=str(domains))
        async with client(h, addr="192.0.2.10") as http:
            codes = [(await sign_up(http, email)).status_code for email in (
                "ada@example.org", "x@sharklasers.com", "y@mx.evil.example",
                "bob@example.org", "late@example.org")]
            assert codes == [202, 400, 400, 202, 429]
            (first, _) = mailbox.wait(2)
            assert (await http.post("/signup/verify",
                                    json={"token": token_of(first)})).status_code == 201
        async with client(h, addr="198.51.100.3") as http:
            h.runtime.store.create_key("old@example.org")
            assert (await sign_up(http, "old@example.org")).status_code == 202
            api = (await http.get("/admin/signup/funnel", headers=ADMIN)).json()
            bad = await http.get("/admin/signup/funnel?since=soon", headers=ADMIN)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
            none = (await http.get(f"/admin/signup/funnel?since={time.time() + 60}",
                                   headers=ADMIN)).json()
    assert api["object"] == "signup.funnel" and api["mode"] == "verify"
    assert {k: api[k] for k in ("requests", "screened_out", "existing", "accepted",
                                "verification_mailed", "waitlisted", "keys_issued")} == {
        "requests": 6, "screened_out": 3, "existing": 1, "accepted": 2,
        "verification_mailed": 2, "waitlisted": 0, "keys_issued": 1}
    assert api["screened_out_by_reason"] == {
        "disposable domain": 1, "denied domain": 1, "velocity: address prefix": 1}
    assert none["requests"] == 0 and none["screened_out_by_reason"] == {}

    async with h.http() as browser:
        await login(browser)
        page = (await browser.get("/console/")).text
    card = page[page.index("Sign-up funnel"):]
    card = card[:card.index("</section>")]
    rows = dict(re.findall(r"<td>([^<]+)</td><td class=\"num\">([\d,]+)</td>", card))
    assert rows == {"sign-up requests (puzzle solved)": "6", "screened out": "3",
                    "disposable domain": "1", "denied domain": "1",
                    "velocity: address prefix": "1", "address had an account": "1",
                    "accepted": "2", "verification mails sent": "2", "waitlisted": "0",
                    "approved": "0", "denied": "0", "keys issued": "1"}


async def test_overview_has_no_funnel_while_signup_is_closed(console):
    async with console.http() as client:
        await login(client)
        page = (await client.get("/console/")).text
    assert "Sign-up funnel" not in page


async def test_overview_chart_zooms_to_the_shortest_window_holding_the_traffic(console):
    from test_store import make_event

    now = time.time()
    console.runtime.store.write_events(
        [make_event(10_000 + i, ts=now - 300 + i, account=f"z{i % 3}") for i in range(90)])
    async with console.http() as client:
        await login(client)
        page = (await client.get("/console/")).text
    # Ten minutes in 10 s buckets: the two-minute window would cut the traffic off.
    assert "Per 10 s (times in UTC)." in page
    assert "requests (total 90)" in page and "active accounts (peak 3)" in page

"""Sign-up through the HTTP API: puzzle, screening, mail over real SMTP, keys, waitlist,
the circuit breaker, evidence and step-up."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
import urllib.parse

import altcha
import httpx
import pytest

from conftest import ADMIN_TOKEN
from distillguard.config import SettingsError
from distillguard.gateway.app import build_app
from distillguard.signup.breaker import Breaker
from distillguard.signup.normalize import address_prefix, client_fingerprint, parse_email
from distillguard.signup.store import SQLiteSignupStore
from distillguard.testing.mailbox import Mailbox, smtp_server

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
# Cheap puzzles: the tests check the protocol, not the cost.
FAST = {"signup_pow_cost": 1, "public_url": "https://api.example.test",
        "signup_nojs_wait": 0.3}


@pytest.fixture
def mailbox():
    with smtp_server() as box:
        yield box


@pytest.fixture
async def signup_gateway(harness_factory, mailbox):
    async def start(**overrides):
        values = {**FAST, "signup_mode": "verify", "smtp_url": mailbox.url, **overrides}
        return await harness_factory(**values)

    return start


def client(harness, addr="198.51.100.7", ua="test-browser/1.0"):
    transport = httpx.ASGITransport(app=harness.app, client=(addr, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway",
                             headers={"user-agent": ua})


async def solve(http, purpose="signup"):
    resp = await http.get("/signup/challenge", params={"purpose": purpose})
    assert resp.status_code == 200, resp.text
    challenge = altcha.Challenge.from_dict(resp.json())
    solution = altcha.solve_challenge(challenge, timeout=20)
    assert solution is not None
    return altcha.Payload(challenge, solution).to_base64()


async def sign_up(http, email):
    return await http.post("/signup", json={"email": email, "altcha": await solve(http)})


def token_of(message) -> str:
    (link,) = Mailbox.links(message)
    return urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["token"][0]


async def test_sign_up_by_email_link_gives_a_working_key_once(signup_gateway, mailbox):
    harness = await signup_gateway()
    async with client(harness) as http:
        resp = await sign_up(http, "Ada.Lovelace+api@Example.org")
        assert resp.status_code == 202
        assert resp.json() == {"status": "verification_sent"}
        (mail,) = mailbox.wait(1)
        assert mail["To"] == "Ada.Lovelace+api@Example.org"
        link = Mailbox.links(mail)[0]
        assert link.startswith("https://api.example.test/signup/verify?token=")
        page = await http.get("/signup/verify", params={"token": token_of(mail)})
        assert page.status_code == 200
        assert page.headers["cache-control"] == "no-store"
        key = re.search(r'id="api-key">(sk-dg-[^<]+)<', page.text).group(1)
        models = await http.get("/v1/models", headers={"authorization": f"Bearer {key}"})
        assert models.status_code == 200
        again = await http.post("/signup/verify", json={"token": token_of(mail)})
        assert again.status_code == 400
        assert again.json()["error"]["code"] == "invalid_token"
    ev = harness.runtime.signup.signup_evidence("ada.lovelace@example.org")
    assert ev.domain == "example.org" and ev.prefix == "198.51.100.0/24"
    assert ev.waitlist == "none" and len(ev.fingerprint) == 16
    # Campaign detection reads the same records.
    assert [e.account for e in harness.runtime.detection.signup_evidence()] == [ev.account]
    ops = [e.op for e in harness.runtime.policy.audit(account="ada.lovelace@example.org")]
    assert ops == ["signup_created", "signup_accepted"]


async def test_post_verify_returns_the_key_as_json(signup_gateway, mailbox):
    harness = await signup_gateway()
    async with client(harness) as http:
        await sign_up(http, "grace@example.org")
        resp = await http.post("/signup/verify", json={"token": token_of(mailbox.wait(1)[0])})
        assert resp.status_code == 201
        body = resp.json()
        assert body["status"] == "created" and body["account"] == "grace@example.org"
        assert body["api_key"].startswith("sk-dg-")


async def test_existing_address_gets_the_same_answer_and_its_owner_a_notice(
        signup_gateway, mailbox):
    harness = await signup_gateway()
    harness.runtime.store.create_key("johnsmith@gmail.com")
    async with client(harness) as http:
        new = await sign_up(http, "someone.new@example.org")
        # Dots and plus-tags do not make a new gmail address.
        old = await sign_up(http, "John.Smith+again@googlemail.com")
    assert (new.status_code, new.content) == (old.status_code, old.content)
    mails = mailbox.wait(2)
    notice = next(m for m in mails if m["To"] == "John.Smith+again@googlemail.com")
    assert "already has an account" in notice.get_payload()
    assert Mailbox.links(notice) == []
    decisions = {r.normalised: r.decision for r in harness.runtime.signup.db.requests()}
    assert decisions["johnsmith@gmail.com"] == "existing"


async def test_puzzle_is_required_checked_and_single_use(signup_gateway):
    harness = await signup_gateway()
    async with client(harness) as http:
        missing = await http.post("/signup", json={"email": "a@example.org"})
        assert missing.status_code == 400
        assert missing.json()["error"] == {
            "message": missing.json()["error"]["message"], "type": "invalid_request_error",
            "param": "altcha", "code": "altcha_required"}
        payload = await solve(http)
        assert (await http.post("/signup", json={"email": "a@example.org",
                                                 "altcha": payload})).status_code == 202
        replay = await http.post("/signup", json={"email": "b@example.org", "altcha": payload})
        assert replay.json()["error"]["code"] == "altcha_replayed"
        forged = altcha.Payload.from_base64(await solve(http))
        forged.challenge.parameters.key_prefix = ""
        bad = await http.post("/signup", json={"email": "c@example.org",
                                               "altcha": forged.to_base64()})
        assert bad.json()["error"]["code"] == "invalid_altcha"
        unknown = await http.post("/signup", json={"email": "d@example.org", "altcha": "x",
                                                   "name": "d"})
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "name"
        notjson = await http.post("/signup", content=b"{", headers={
            "content-type": "application/json"})
        assert notjson.status_code == 400
        email = await http.post("/signup", json={"email": "no-at-sign", "altcha": "x"})
        assert email.json()["error"]["code"] == "invalid_email"


async def test_disposable_domain_and_deny_file_are_refused_with_reasons(
        signup_gateway, tmp_path):
    domains = tmp_path / "domains.txt"
    domains.write_text("deny evil.example  # a catch-all domain\nallow mailinator.com\n")
    harness = await signup_gateway(signup_domains_file=str(domains))
    async with client(harness) as http:
        throwaway = await sign_up(http, "x@sharklasers.com")
        assert throwaway.status_code == 400
        assert throwaway.json()["error"]["code"] == "email_domain_not_allowed"
        denied = await sign_up(http, "x@mx.evil.example")
        assert denied.json()["error"]["code"] == "email_domain_not_allowed"
        allowed = await sign_up(http, "x@mailinator.com")
        assert allowed.status_code == 202
    reasons = {r.normalised: r.reason for r in harness.runtime.signup.db.requests()}
    assert "disposable-mail domain" in reasons["x@sharklasers.com"]
    assert "denied by the local domain file (evil.example)" in reasons["x@mx.evil.example"]
    audit = harness.runtime.policy.audit(account="x@sharklasers.com")
    assert audit[0].op == "signup_rejected" and "disposable" in audit[0].reason


async def test_velocity_per_prefix_domain_and_fingerprint(signup_gateway):
    harness = await signup_gateway(signup_velocity_prefix=3, signup_velocity_domain=4,
                                   signup_velocity_fingerprint=100)
    async with client(harness, addr="192.0.2.10") as http:
        codes = [(await sign_up(http, f"user{i}@corp{i}.example")).status_code
                 for i in range(4)]
        assert codes == [202, 202, 202, 429]
        refused = await sign_up(http, "user9@corp9.example")
        assert refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "signup_rate_limited"
    # One domain from many networks: the domain limit binds (not for gmail.com).
    statuses = []
    for i in range(5):
        async with client(harness, addr=f"10.{i}.0.1") as http:
            statuses.append((await sign_up(http, f"u{i}@catchall.example")).status_code)
            await sign_up(http, f"u{i}x@gmail.com")
    assert statuses == [202, 202, 202, 202, 429]
    rejected = harness.runtime.signup.db.requests(decision="rejected")
    assert any("address prefix 192.0.2.0/24" in r.reason for r in rejected)
    assert any("email domain catchall.example" in r.reason for r in rejected)
    assert not any("gmail.com" in r.reason for r in rejected)


async def test_fingerprint_velocity_spans_networks(signup_gateway):
    harness = await signup_gateway(signup_velocity_fingerprint=2)
    codes = []
    for i in range(3):
        async with client(harness, addr=f"10.9.{i}.1", ua="sybil/1") as http:
            codes.append((await sign_up(http, f"s{i}@gmail.com")).status_code)
    assert codes == [202, 202, 429]


async def test_puzzle_level_rises_with_source_pressure(signup_gateway):
    harness = await signup_gateway(signup_velocity_prefix=50)
    async with client(harness, addr="192.0.2.77") as http:
        levels = []
        for i in range(5):
            challenge = (await http.get("/signup/challenge")).json()
            levels.append(int(challenge["parameters"]["data"]["level"]))
            await sign_up(http, f"p{i}@gmail.com")
        stale = await http.get("/signup/challenge")
    assert levels == [0, 0, 1, 1, 2]
    # A puzzle solved at a level well below the one now asked is refused.
    for i in range(5, 8):
        async with client(harness, addr="192.0.2.77") as http:
            await sign_up(http, f"p{i}@gmail.com")
    solution = altcha.solve_challenge(altcha.Challenge.from_dict(stale.json()))
    async with client(harness, addr="192.0.2.77") as http:
        resp = await http.post("/signup", json={"email": "late@gmail.com", "altcha":
                                                altcha.Payload(altcha.Challenge.from_dict(
                                                    stale.json()), solution).to_base64()})
    assert resp.json()["error"]["code"] == "altcha_too_easy"


async def test_closed_mode_is_the_default(harness):
    async with client(harness) as http:
        assert "Sign-up is closed" in (await http.get("/signup")).text
        resp = await http.post("/signup", json={"email": "a@example.org", "altcha": "x"})
        assert resp.status_code == 403
        assert resp.json()["error"]["code"] == "signup_closed"
        assert (await http.get("/signup/challenge")).status_code == 403


async def test_open_mode_issues_a_key_at_once(signup_gateway):
    harness = await signup_gateway(signup_mode="open", smtp_url="")
    async with client(harness) as http:
        resp = await sign_up(http, "fast@example.org")
        assert resp.status_code == 201
        key = resp.json()["api_key"]
        ok = await http.get("/v1/models", headers={"authorization": f"Bearer {key}"})
        assert ok.status_code == 200


async def test_waitlist_queues_confirmed_addresses_for_an_admin(signup_gateway, mailbox):
    harness = await signup_gateway(signup_mode="waitlist")
    async with client(harness) as http:
        await sign_up(http, "wait@example.org")
        await sign_up(http, "nope@example.org")
        mails = mailbox.wait(2)
        for mail in mails:
            page = await http.get("/signup/verify", params={"token": token_of(mail)})
            assert "reviewed by an administrator" in page.text
        queue = (await http.get("/admin/signup/waitlist", headers=ADMIN)).json()["data"]
        assert {r["normalised"] for r in queue} == {"wait@example.org", "nope@example.org"}
        ids = {r["normalised"]: r["id"] for r in queue}
        assert (await http.post(f"/admin/signup/requests/{ids['wait@example.org']}/approve",
                                headers=ADMIN, json={"analyst": "ana"})).status_code == 200
        denied = await http.post(f"/admin/signup/requests/{ids['nope@example.org']}/deny",
                                 headers=ADMIN, json={"reason": "looks automated"})
        assert denied.json()["state"] == "denied"
        twice = await http.post(f"/admin/signup/requests/{ids['nope@example.org']}/approve",
                                headers=ADMIN)
        assert twice.status_code == 404
        approved = mailbox.wait(3)[2]
        assert approved["To"] == "wait@example.org"
        page = await http.get("/signup/verify", params={"token": token_of(approved)})
        assert 'id="api-key"' in page.text
        assert (await http.get("/admin/signup/waitlist")).status_code == 401
    ev = harness.runtime.signup.signup_evidence("wait@example.org")
    assert ev.waitlist == "approved by analyst:ana"
    assert harness.runtime.store.get_account("nope@example.org") is None


async def test_circuit_breaker_trips_to_waitlist_and_an_admin_reopens(signup_gateway,
                                                                      mailbox):
    harness = await signup_gateway(signup_breaker_min_rate=2.0, signup_velocity_prefix=0,
                                   signup_velocity_fingerprint=0)
    async with client(harness) as http:
        for i in range(12):
            assert (await sign_up(http, f"burst{i}@gmail.com")).status_code == 202
        breaker = (await http.get("/admin/signup/breaker", headers=ADMIN)).json()
        assert breaker["mode"] == "waitlist" and breaker["tripped_at"]
        assert "Poisson tail" in breaker["reason"]
        metrics = (await http.get("/metrics")).text
        assert "distillguard_signup_breaker_open 1" in metrics
        assert 'distillguard_signup_mode{mode="waitlist"} 1' in metrics
        # A link mailed before the trip but opened after it waits for approval.
        page = await http.get("/signup/verify", params={"token": token_of(mailbox.wait(1)[0])})
        assert "reviewed by an administrator" in page.text
        reopened = await http.post("/admin/signup/breaker/reopen", headers=ADMIN)
        assert reopened.json()["mode"] == "verify"
        assert "distillguard_signup_breaker_open 0" in (await http.get("/metrics")).text
    ops = [e.op for e in harness.runtime.policy.audit(account="signup:breaker")]
    assert ops == ["signup_breaker_reopened", "signup_breaker_tripped"]


def test_breaker_model_learns_the_usual_rate_and_trips_far_above_it(tmp_path):
    from distillguard.signup.store import SignupRequest

    store = SQLiteSignupStore(tmp_path)
    breaker = Breaker(store, min_rate=20.0, window=600.0, p=1e-6)
    now = [100 * 3600.0]

    def attempts(hours, per_hour):
        spacing = 3600.0 / per_hour
        for i in range(int(hours * per_hour)):
            now[0] += spacing
            store.add_request(SignupRequest(f"r{now[0]}", now[0], "e", "e", "d", "p", "f",
                                            "accepted", "", 0, "mailed"))
            if breaker.check(now[0]):
                return i
        return None

    assert attempts(24, 20) is None  # a day at the usual rate
    assert attempts(6, 40) is None  # twice the usual: busy, not an attack
    learned = breaker.state(now[0]).rate
    assert 22 < learned < 40  # it learned part of the rise
    assert breaker.level(now[0]) == 0
    tripped_after = attempts(1, 400)  # ten times the usual trips within minutes
    assert tripped_after is not None and tripped_after < 60
    assert breaker.state(now[0]).rate == learned  # the burst taught it nothing
    store.close()


def test_normalisation_prefixes_and_fingerprints():
    assert parse_email(" J.O.H.N+x@GoogleMail.com").normalised == "john@gmail.com"
    assert parse_email("j.o.h.n+x@example.com").normalised == "j.o.h.n@example.com"
    for bad in ("", "a@b", "a b@c.com", "@x.com", "+tag@x.com", "é@x.com", 5):
        with pytest.raises(ValueError):
            parse_email(bad)
    assert address_prefix("203.0.113.9") == "203.0.113.0/24"
    assert address_prefix("2001:db8:1:2::5") == "2001:db8:1::/48"
    assert address_prefix("::ffff:198.51.100.3") == "198.51.100.0/24"
    assert address_prefix("not-an-ip") == "unknown"
    a = client_fingerprint([(b"host", b"x"), (b"user-agent", b"ua")])
    assert a == client_fingerprint([(b"host", b"y"), (b"cookie", b"c"), (b"user-agent", b"ua")])
    assert a != client_fingerprint([(b"user-agent", b"ua"), (b"host", b"x")])


async def test_no_js_form_waits_then_signs_up(signup_gateway, mailbox):
    harness = await signup_gateway()
    async with client(harness) as http:
        page = await http.get("/signup")
        assert "<noscript>" in page.text and 'name="email"' in page.text
        first = await http.post("/signup", data={"email": "nojs@example.org"})
        assert first.status_code == 202 and "please wait" in first.text.lower()
        ticket = re.search(r'name="ticket" value="([^"]+)"', first.text).group(1)
        early = await http.post("/signup", data={"email": "nojs@example.org",
                                                 "ticket": ticket})
        assert early.status_code == 400 and "more seconds" in early.text
        await asyncio.sleep(0.35)
        done = await http.post("/signup", data={"email": "nojs@example.org",
                                                "ticket": ticket})
        assert done.status_code == 202 and "Check your inbox" in done.text
        again = await http.post("/signup", data={"email": "nojs@example.org",
                                                 "ticket": ticket})
        assert "used already" in again.text
        other = await http.post("/signup", data={"email": "other@example.org",
                                                 "ticket": ticket})
        assert "another address" in other.text
    assert mailbox.wait(1)[0]["To"] == "nojs@example.org"


async def test_no_js_tickets_are_capped_per_minute(signup_gateway):
    harness = await signup_gateway(signup_nojs_per_minute=2)
    async with client(harness) as http:
        codes = [(await http.post("/signup", data={"email": f"n{i}@example.org"})).status_code
                 for i in range(3)]
    assert codes == [202, 202, 429]


def test_sign_up_settings_are_checked(make_settings):
    with pytest.raises(SettingsError, match="public_url"):
        build_app(make_settings(signup_mode="verify", smtp_url="smtp://127.0.0.1:1"))
    with pytest.raises(SettingsError, match="smtp_url"):
        build_app(make_settings(signup_mode="verify", public_url="https://x.test"))
    with pytest.raises(SettingsError, match="signup_mode"):
        build_app(make_settings(signup_mode="sometimes"))


async def test_signup_key_file_is_private(signup_gateway, tmp_path):
    harness = await signup_gateway()
    key_file = harness.runtime.settings.data_path / "signup.key"
    assert key_file.stat().st_mode & 0o777 == 0o600


# --- step-up ---------------------------------------------------------------------------
async def _signed_up_account(http, mailbox, email):
    await sign_up(http, email)
    mail = mailbox.wait(len(mailbox.messages) + 1)[-1]
    resp = await http.post("/signup/verify", json={"token": token_of(mail)})
    return resp.json()["account"], resp.json()["api_key"]


async def test_challenged_account_steps_up_by_itself(signup_gateway, mailbox):
    harness = await signup_gateway()
    async with client(harness) as http:
        account, key = await _signed_up_account(http, mailbox, "step@example.org")
        harness.runtime.policy.set_action(account, "challenge", reason="risk 0.9",
                                          author="rule:swarm")
        auth = {"authorization": f"Bearer {key}"}
        blocked = await http.get("/v1/models", headers=auth)
        assert blocked.status_code == 403
        error = blocked.json()["error"]
        assert error["code"] == "account_challenge_required"
        url = re.search(r"(https://\S+)", error["message"]).group(1)
        assert blocked.headers["link"] == f'<{url}>; rel="verify"'
        path = url.removeprefix("https://api.example.test")
        page = await http.get(path)
        assert "s***@example.org" in page.text
        fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page.text))
        start = await http.post("/signup/step-up", data=fields)
        assert start.status_code == 202 and "Check your inbox" in start.text
        again = await http.post("/signup/step-up", json=fields)
        assert again.status_code == 429
        mail = mailbox.wait(2)[-1]
        assert mail["To"] == "step@example.org"
        (link,) = Mailbox.links(mail)
        puzzle_page = await http.get(link.removeprefix("https://api.example.test"))
        assert "altcha-widget" in puzzle_page.text
        token = re.search(r'name="token" value="([^"]+)"', puzzle_page.text).group(1)
        easy = await solve(http)  # a sign-up puzzle does not do for step-up
        refused = await http.post("/signup/step-up/complete",
                                  json={"token": token, "altcha": easy})
        assert refused.status_code == 400
        challenge = (await http.get("/signup/challenge",
                                    params={"purpose": "stepup"})).json()
        assert challenge["parameters"]["data"]["level"] == "5"
        done = await http.post("/signup/step-up/complete",
                               json={"token": token, "altcha": await solve(http, "stepup")})
        assert done.json() == {"status": "verified", "account": account}
        assert (await http.get("/v1/models", headers=auth)).status_code == 200
    audit = harness.runtime.policy.audit(account=account)
    assert [e.op for e in audit[:4]] == ["lift", "step_up_email_confirmed",
                                         "step_up_mailed", "set"]
    assert audit[0].author == "step-up:email+puzzle"


async def test_step_up_link_is_signed_and_needs_a_challenge(signup_gateway, mailbox):
    harness = await signup_gateway()
    service = harness.runtime.signup
    async with client(harness) as http:
        account, _ = await _signed_up_account(http, mailbox, "calm@example.org")
        url = service.step_up_url(account)
        forged = url.replace("calm%40", "other%40")
        resp = await http.get(forged.removeprefix("https://api.example.test"))
        assert resp.status_code == 400
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        not_challenged = await http.post("/signup/step-up", json=q)
        assert not_challenged.json()["error"]["code"] == "challenge_not_found"


async def test_step_up_through_an_identity_provider_webhook(signup_gateway, mailbox):
    from aiohttp import web

    secret = "webhook-secret-0123456789"
    received = []

    async def idp(request):
        received.append((await request.read(), request.headers["x-distillguard-signature"]))
        return web.json_response({"redirect_url": "https://idp.example.test/verify/1"})

    app = web.Application()
    app.router.add_post("/hook", idp)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        harness = await signup_gateway(verification_webhook=f"http://127.0.0.1:{port}/hook",
                                       verification_webhook_secret=secret)
        async with client(harness) as http:
            account, key = await _signed_up_account(http, mailbox, "idp@example.org")
            harness.runtime.policy.set_action(account, "challenge", reason="x",
                                              author="analyst:ana")
            q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(
                harness.runtime.signup.step_up_url(account)).query))
            resp = await http.post("/signup/step-up", data=q, follow_redirects=False)
            assert resp.status_code == 303
            assert resp.headers["location"] == "https://idp.example.test/verify/1"
            body, signature = received[0]
            ts, sig = (p.split("=", 1)[1] for p in signature.split(","))
            assert sig == hmac.new(secret.encode(), ts.encode() + b"." + body,
                                   hashlib.sha256).hexdigest()
            import orjson

            hook = orjson.loads(body)
            assert hook["account"] == account and hook["email"] == "idp@example.org"

            def signed(payload):
                raw = orjson.dumps(payload)
                now = str(int(time.time()))
                mac = hmac.new(secret.encode(), now.encode() + b"." + raw,
                               hashlib.sha256).hexdigest()
                return {"content": raw, "headers": {
                    "x-distillguard-signature": f"t={now},v1={mac}",
                    "content-type": "application/json"}}

            bad = await http.post("/signup/step-up/callback", content=b'{"state": "x"}',
                                  headers={"x-distillguard-signature": "t=1,v1=00"})
            assert bad.status_code == 401
            ok = await http.post("/signup/step-up/callback",
                                 **signed({"state": hook["state"], "verified": True}))
            assert ok.status_code == 200, ok.text
            replay = await http.post("/signup/step-up/callback",
                                     **signed({"state": hook["state"], "verified": True}))
            assert replay.status_code == 400
            models = await http.get("/v1/models", headers={"authorization": f"Bearer {key}"})
            assert models.status_code == 200
        audit = harness.runtime.policy.audit(account=account)
        assert audit[0].op == "lift" and audit[0].author == "step-up:webhook"
        assert audit[1].op == "step_up_webhook"
    finally:
        await runner.cleanup()


@pytest.mark.postgres
async def test_sign_up_on_postgres(pg_dsn, signup_gateway, mailbox):
    harness = await signup_gateway(store="postgres", postgres_dsn=pg_dsn)
    async with client(harness) as http:
        account, key = await _signed_up_account(http, mailbox, "pg@example.org")
        assert (await sign_up(http, "pg@example.org")).status_code == 202
        models = await http.get("/v1/models", headers={"authorization": f"Bearer {key}"})
        assert models.status_code == 200
    assert harness.runtime.signup.db.name == "postgres"
    assert harness.runtime.signup.signup_evidence(account).domain == "example.org"


def _funnel_rows(db):
    from distillguard.signup.screening import REFUSAL_KINDS
    from distillguard.signup.store import SignupRequest

    def req(i, ts, decision, reason, state, decided_by=None):
        db.add_request(SignupRequest(f"sr_{i}", ts, f"u{i}@x.example", f"u{i}@x.example",
                                     "x.example", "192.0.2.0/24", "fp", decision, reason, 0,
                                     state, decided_by=decided_by))

    req(0, 50.0, "accepted", "passed screening", "created")  # before `since`
    req(1, 150.0, "accepted", "passed screening", "created")
    req(2, 150.0, "accepted", "passed screening", "mailed")
    req(3, 150.0, "accepted", "passed screening", "waitlisted")
    req(4, 150.0, "accepted", "passed screening", "created", decided_by="analyst:a")
    req(5, 150.0, "accepted", "passed screening", "denied", decided_by="analyst:a")
    req(6, 150.0, "rejected", "domain y.example is a disposable-mail domain (y.example)",
        "refused")
    req(7, 150.0, "rejected", "velocity: client fingerprint ab made 9 sign-up attempts in "
        "the last hour (limit 3)", "refused")
    req(8, 150.0, "rejected", "something new", "refused")
    req(9, 150.0, "existing", "address already has an account", "mailed")
    db.add_token("h1", "verify", request_id="sr_2", account=None, created_at=150.0,
                 expires_at=1e12)
    db.add_token("h2", "key", request_id="sr_4", account=None, created_at=150.0,
                 expires_at=1e12)
    return db.funnel(100.0, REFUSAL_KINDS)


EXPECTED_FUNNEL = {
    "since": 100.0, "requests": 9, "screened_out": 3,
    "screened_out_by_reason": {"disposable domain": 1, "velocity: client fingerprint": 1,
                               "other": 1},
    "existing": 1, "accepted": 5, "verification_mailed": 1, "waitlisted": 3,
    "approved": 1, "denied": 1, "keys_issued": 2}


def test_funnel_counts_on_sqlite(tmp_path):
    db = SQLiteSignupStore(tmp_path)
    assert _funnel_rows(db) == EXPECTED_FUNNEL
    db.close()


def test_funnel_counts_on_postgres(pg_dsn):
    from distillguard.signup.store import PostgresSignupStore

    db = PostgresSignupStore(pg_dsn)
    assert _funnel_rows(db) == EXPECTED_FUNNEL
    db.close()

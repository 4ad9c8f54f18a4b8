"""``SignupService``: sign-up, screening, email verification, the waitlist, the circuit
breaker and self-serve step-up, behind one object that the gateway starts.

The HTTP routes (``signup.routes``) only parse and render; every decision is made here,
so that the bench and tests drive the same code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import os
import secrets
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from distillguard.config import SettingsError
from distillguard.datadir import private_dir
from distillguard.gateway import errors
from distillguard.signup.breaker import Breaker, BreakerState
from distillguard.signup.mail import Mailer, SMTPTarget
from distillguard.signup.normalize import address_prefix, client_fingerprint, parse_email
from distillguard.signup.pow import PuzzleError, Puzzles, Solved
from distillguard.signup.screening import (
    REFUSAL_KINDS,
    Screening,
    Verdict,
    load_domain_file,
)
from distillguard.signup.store import (
    SignupEvidence,
    SignupRequest,
    SignupStore,
    open_signup_store,
)

if TYPE_CHECKING:
    from distillguard.config import Settings

log = logging.getLogger("distillguard.signup")

MODES = ("closed", "verify", "waitlist", "open")
KEY_FILE = "signup.key"
AUTHOR = "signup"
STEP_UP_LINK_TTL = 3600.0  # the URL in a 403 works for an hour
STEP_UP_MAIL_INTERVAL = 300.0  # one step-up mail per account per 5 minutes
STEP_UP_PUZZLE_TTL = 1800.0
WEBHOOK_SKEW = 300.0  # seconds a webhook callback's timestamp may be off
_PUZZLE_CONCURRENCY = 2  # server-side puzzle checks at once (each one PBKDF2 derivation)


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One POST /signup as the service sees it."""

    email: object
    altcha: object = None
    ticket: object = None
    client_addr: str | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()
    form: bool = False  # from the page: no puzzle answer means "give me the wait path"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the client is told: ``status`` and, for some, a key or a wait ticket."""

    status: str  # verification_sent | created | wait | waitlisted | existing
    api_key: str | None = None
    account: str | None = None
    ticket: str | None = None
    wait: float | None = None
    email: str | None = None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_key(settings: Settings) -> bytes:
    """The sign-up HMAC key: the setting, else data_dir/signup.key (made 0600 once)."""
    if settings.signup_secret:
        value = settings.signup_secret.reveal()
        if len(value) < 16:
            raise SettingsError("setting 'signup_secret' must be at least 16 characters")
        return value.encode()
    path = Path(settings.data_path) / KEY_FILE
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path.read_bytes().strip()


class SignupService:
    """Everything behind /signup; ``start`` opens its store and mailer."""

    def __init__(self, settings: Settings, *, store: Any = None, policy: Any = None,
                 signup_store: SignupStore | None = None, mailer: Mailer | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if settings.signup_mode not in MODES:
            raise SettingsError(f"setting 'signup_mode' must be one of {', '.join(MODES)}, "
                                f"got {settings.signup_mode!r}")
        if settings.signup_mode != "closed" and not settings.public_url:
            raise SettingsError("setting 'public_url' is required when signup_mode is "
                                f"{settings.signup_mode} (it makes the links in emails)")
        if settings.signup_mode in ("verify", "waitlist") and not settings.smtp_url \
                and mailer is None:
            raise SettingsError("setting 'smtp_url' is required when signup_mode is "
                                f"{settings.signup_mode} (verification links go by mail)")
        if settings.verification_webhook and len(
                settings.verification_webhook_secret.reveal()) < 16:
            raise SettingsError("setting 'verification_webhook_secret' must be at least 16 "
                                "characters when verification_webhook is set")
        self.settings = settings
        self.store = store
        self.policy = policy
        self.db = signup_store
        self.mailer = mailer
        self.clock = clock
        self.public_url = settings.public_url.rstrip("/")
        self.puzzles: Puzzles | None = None
        self.screening: Screening | None = None
        self.breaker: Breaker | None = None
        self._key = b""
        self._owns_db = signup_store is None
        self._owns_mailer = mailer is None
        self._checks = asyncio.Semaphore(_PUZZLE_CONCURRENCY)
        # No-JS tickets issued in the current minute (one counter: O(1) memory).
        self._tickets_minute = (0, 0)
        # Metrics: fixed label sets only (decision x code), never client-chosen values.
        self.decisions: dict[tuple[str, str], int] = defaultdict(int)
        self.puzzle_failures: dict[str, int] = defaultdict(int)
        self.breaker_trips = 0

    @property
    def configured_mode(self) -> str:
        return self.settings.signup_mode

    async def start(self, *, store: Any = None, policy: Any = None) -> None:
        """Open the sign-up store and mailer; ``store`` and ``policy`` are the gateway's
        account store and policy engine when not given at construction."""
        settings = self.settings
        self.store = store if store is not None else self.store
        self.policy = policy if policy is not None else self.policy
        if self.db is None:
            self.db = await asyncio.to_thread(open_signup_store, settings)
        self._key = await asyncio.to_thread(load_key, settings)
        self.puzzles = Puzzles(self._key, cost=settings.signup_pow_cost,
                               max_level=settings.signup_pow_max_level,
                               nojs_wait=settings.signup_nojs_wait)
        allowed, denied = load_domain_file(settings.signup_domains_file)
        self.screening = Screening(self.db, per_prefix=settings.signup_velocity_prefix,
                                   per_domain=settings.signup_velocity_domain,
                                   per_fingerprint=settings.signup_velocity_fingerprint,
                                   allowed=allowed, denied=denied)
        self.breaker = Breaker(self.db, min_rate=settings.signup_breaker_min_rate,
                               window=settings.signup_breaker_window,
                               p=settings.signup_breaker_p, enabled=settings.signup_breaker,
                               on_change=self._breaker_changed)
        if self.mailer is None and settings.smtp_url:
            host = urllib.parse.urlsplit(self.public_url).hostname or "localhost"
            self.mailer = Mailer(SMTPTarget.parse(settings.smtp_url),
                                 settings.smtp_from or f"distillguard@{host}",
                                 timeout=settings.smtp_timeout)
        if self.mailer is not None and self._owns_mailer:
            self.mailer.start()
        await asyncio.to_thread(self.db.prune, self.clock())

    async def close(self) -> None:
        if self.mailer is not None and self._owns_mailer:
            await self.mailer.close()
        if self.db is not None and self._owns_db:
            self.db.close()

    # --- modes -----------------------------------------------------------------------
    def mode(self) -> str:
        """The mode in force: the configured one, or waitlist while the breaker is open."""
        if self.configured_mode in ("verify", "open") and self.breaker is not None \
                and self.breaker.state(self.clock()).tripped_at is not None:
            return "waitlist"
        return self.configured_mode

    def _breaker_changed(self, state: BreakerState) -> None:
        if state.tripped_at is not None:
            self.breaker_trips += 1
            self._audit("signup:breaker", "signup_breaker_tripped", state.reason)
        else:
            self._audit("signup:breaker", "signup_breaker_reopened",
                        f"reopened by {state.reopened_by}")

    async def reopen(self, author: str) -> BreakerState:
        """An admin closes the breaker: sign-up returns to its configured mode."""
        return await asyncio.to_thread(self.breaker.reopen, self.clock(), author=author)

    def _audit(self, account: str, op: str, reason: str, author: str = AUTHOR) -> None:
        if self.policy is not None:
            self.policy.note(account, op, reason=reason, author=author)

    # --- puzzles ---------------------------------------------------------------------
    def required_level(self, prefix: str, now: float) -> int:
        """The puzzle level asked of a client now: global pressure plus one level per
        two attempts its address prefix made in the last hour."""
        own = self.screening.source_attempts(now, prefix) // 2
        return self.puzzles.clamp(self.breaker.level(now) + own)

    async def challenge(self, client_addr: str | None, purpose: str = "signup") -> dict:
        """A new ALTCHA challenge at the level this client is asked for now."""
        if purpose == "signup":
            self._require_open()
        if purpose == "stepup":
            level = self.puzzles.max_level
        else:
            level = await asyncio.to_thread(self.required_level,
                                            address_prefix(client_addr), self.clock())
        return self.puzzles.challenge(level, purpose=purpose)

    async def _check_puzzle(self, altcha_payload: object, ticket: object, email: str,
                            need: int, purpose: str) -> Solved:
        try:
            if ticket is not None and ticket != "":
                solved = self.puzzles.redeem(ticket, email, purpose=purpose)
            else:
                async with self._checks:
                    solved = await asyncio.to_thread(self.puzzles.verify, altcha_payload,
                                                     purpose=purpose)
        except PuzzleError as exc:
            self.puzzle_failures[exc.code] += 1
            param = "ticket" if exc.code.endswith("ticket") or "ticket_" in exc.code \
                else "altcha"
            raise errors.InvalidRequest(str(exc), param=param, code=exc.code) from None
        if solved.level < need:
            self.puzzle_failures["altcha_too_easy"] += 1
            raise errors.InvalidRequest(
                f"sign-up pressure rose: this puzzle is level {solved.level}, level {need} "
                "is needed now; solve a new one", param="altcha", code="altcha_too_easy")
        if not await asyncio.to_thread(self.db.use_puzzle, solved.digest, solved.expires_at):
            self.puzzle_failures["altcha_replayed"] += 1
            raise errors.InvalidRequest("this puzzle answer was used already",
                                        param="altcha", code="altcha_replayed")
        return solved

    def _issue_ticket(self, email: str, level: int, purpose: str) -> Outcome:
        minute = int(self.clock() // 60)
        seen_minute, count = self._tickets_minute
        count = count + 1 if seen_minute == minute else 1
        if count > self.settings.signup_nojs_per_minute:
            raise errors.RateLimited(
                "too many visitors without JavaScript right now; try again in a minute, "
                "or enable JavaScript to solve the puzzle instead",
                code="signup_busy", headers={"Retry-After": "60"})
        self._tickets_minute = (minute, count)
        ticket, wait = self.puzzles.ticket(email, level, purpose=purpose)
        return Outcome("wait", ticket=ticket, wait=wait, email=email)

    def _require_open(self) -> None:
        if self.configured_mode == "closed":
            raise errors.PermissionDenied("sign-up is closed on this server; ask its "
                                          "operator for an API key", code="signup_closed")

    # --- sign-up ---------------------------------------------------------------------
    async def submit(self, attempt: Attempt) -> Outcome:
        """Screen a sign-up and act on it: mail a link, queue it, or refuse it."""
        self._require_open()
        try:
            address = parse_email(attempt.email)
        except ValueError as exc:
            raise errors.InvalidRequest(str(exc), param="email", code="invalid_email") from None
        now = self.clock()
        prefix = address_prefix(attempt.client_addr)
        need = await asyncio.to_thread(self.required_level, prefix, now)
        no_answer = attempt.altcha in (None, "") and attempt.ticket in (None, "")
        if no_answer and attempt.form:
            return self._issue_ticket(address.normalised, need, "signup")
        if self.mailer is not None and not self.mailer.room():
            raise errors.UpstreamError("sign-up mail is backed up; try again in a minute",
                                       status=503, code="signup_busy")
        # One level of grace: pressure may have risen while the client solved.
        solved = await self._check_puzzle(attempt.altcha, attempt.ticket, address.normalised,
                                          max(0, need - 1), "signup")
        fingerprint = client_fingerprint(list(attempt.headers))
        return await asyncio.to_thread(self._screen_and_act, address, prefix, fingerprint,
                                       solved.level, now)

    def _screen_and_act(self, address: Any, prefix: str, fingerprint: str, level: int,
                        now: float) -> Outcome:
        verdict = self.screening.domain(address.domain)
        if verdict.ok:
            verdict = self.screening.velocity(now, prefix=prefix, domain=address.domain,
                                              fingerprint=fingerprint)
        existing = False
        if verdict.ok:
            existing = (self.store.get_account(address.normalised) is not None
                        or self.db.evidence(address.normalised) is not None)
        decision = "rejected" if not verdict.ok else "existing" if existing else "accepted"
        reason = ("address already has an account; the owner was told by mail" if existing
                  else verdict.reason)
        request = SignupRequest(
            id="sr_" + secrets.token_hex(8), ts=now, email=address.given,
            normalised=address.normalised, domain=address.domain, prefix=prefix,
            fingerprint=fingerprint, decision=decision, reason=reason, level=level,
            state="refused" if not verdict.ok else "mailed")
        self.db.add_request(request)
        self.decisions[(decision, verdict.code)] += 1
        self._audit(address.normalised, f"signup_{decision}",
                    f"{reason} [request {request.id}, prefix {prefix}, fingerprint "
                    f"{fingerprint}, puzzle level {level}]")
        self.breaker.check(now)
        if not verdict.ok:
            raise _refusal(verdict)
        if existing:
            self._mail(address.given, "Your API account",
                       "Someone asked to sign up with this address, which already has an "
                       "account. If it was you, use your existing key or ask the operator "
                       "for a new one. If not, you can ignore this message.\n")
            return Outcome("verification_sent")
        if self.mode() == "open":
            return self._create(request, waitlist="none")
        token = self._token("verify", request_id=request.id, account=None, now=now)
        self._mail(address.given, "Confirm your address",
                   "Open this link to confirm your address and see your API key (it works "
                   f"once, for {self.settings.signup_token_ttl / 3600:.0f} hours):\n\n"
                   f"{self.public_url}/signup/verify?token={token}\n\n"
                   "If you did not ask for an account, ignore this message.\n")
        return Outcome("verification_sent")

    def _token(self, kind: str, *, request_id: str | None, account: str | None, now: float,
               ttl: float | None = None) -> str:
        token = secrets.token_urlsafe(32)
        self.db.add_token(token_hash(token), kind, request_id=request_id, account=account,
                          created_at=now,
                          expires_at=now + (ttl or self.settings.signup_token_ttl))
        return token

    def _mail(self, to: str, subject: str, text: str) -> None:
        if self.mailer is None:
            raise errors.ServerError("no mail server is configured (setting smtp_url)")
        if not self.mailer.send(to, subject, text):
            raise errors.UpstreamError("sign-up mail is backed up; try again in a minute",
                                       status=503, code="signup_busy")

    def _create(self, request: SignupRequest, *, waitlist: str) -> Outcome:
        account = request.normalised
        if self.store.get_account(account) is not None or self.db.evidence(account):
            self.db.set_state(request.id, "existing")
            return Outcome("existing", account=account)
        record, key = self.store.create_key(account, name="signup")
        self.db.add_evidence(SignupEvidence(
            account=account, email=request.email, normalised=request.normalised,
            domain=request.domain, prefix=request.prefix, fingerprint=request.fingerprint,
            signed_up_at=self.clock(), waitlist=waitlist, request_id=request.id))
        self.db.set_state(request.id, "created", account=account)
        self._audit(account, "signup_created", f"key {record.key_id} issued "
                    f"[request {request.id}, waitlist: {waitlist}]")
        return Outcome("created", api_key=key, account=account)

    async def verify(self, token: object) -> Outcome:
        """Consume an emailed link: show the key, or queue the address for approval."""
        if not isinstance(token, str) or not 20 <= len(token) <= 100:
            raise _bad_link()
        return await asyncio.to_thread(self._verify, token)

    def _verify(self, token: str) -> Outcome:
        now = self.clock()
        used = self.db.consume_token(token_hash(token), ("verify", "key"), now)
        if used is None or used.request_id is None:
            raise _bad_link()
        request = self.db.get_request(used.request_id)
        if request is None:
            raise _bad_link()
        if used.kind == "key":
            return self._create(request, waitlist=f"approved by {request.decided_by}")
        if self.mode() == "waitlist":
            self.db.set_state(request.id, "waitlisted")
            self.decisions[("waitlisted", "waitlist")] += 1
            self._audit(request.normalised, "signup_waitlisted",
                        f"address confirmed; waiting for approval [request {request.id}]")
            return Outcome("waitlisted")
        return self._create(request, waitlist="none")

    # --- waitlist (admin) ------------------------------------------------------------
    def waitlist(self, limit: int = 100) -> list[SignupRequest]:
        return self.db.requests(state="waitlisted", limit=limit)

    def approve(self, request_id: str, author: str) -> SignupRequest:
        """Approve a waitlisted request: its address gets a link to its key."""
        now = self.clock()
        if not self.db.set_state(request_id, "approved", decided_by=author, decided_at=now,
                                 only_from="waitlisted"):
            raise errors.NotFound(f"no waitlisted sign-up with id {request_id!r}",
                                  param="request_id", code="signup_request_not_found")
        request = self.db.get_request(request_id)
        token = self._token("key", request_id=request_id, account=None, now=now)
        self._mail(request.email, "Your API key is ready",
                   "Your sign-up was approved. Open this link to see your API key (it works "
                   f"once):\n\n{self.public_url}/signup/verify?token={token}\n")
        self._audit(request.normalised, "signup_approved", f"approved by {author} "
                    f"[request {request_id}]", author=author)
        return request

    def deny(self, request_id: str, author: str, reason: str) -> SignupRequest:
        now = self.clock()
        if not self.db.set_state(request_id, "denied", decided_by=author, decided_at=now,
                                 only_from="waitlisted"):
            raise errors.NotFound(f"no waitlisted sign-up with id {request_id!r}",
                                  param="request_id", code="signup_request_not_found")
        request = self.db.get_request(request_id)
        self._audit(request.normalised, "signup_denied", f"{reason} [request {request_id}]",
                    author=author)
        return request

    # --- funnel ----------------------------------------------------------------------
    def funnel(self, since: float) -> dict[str, Any]:
        """How far the sign-ups since ``since`` got (``SignupStore.funnel``, refusals by
        screening's kinds), with the mode in force."""
        return {"object": "signup.funnel", "mode": self.mode(),
                "configured_mode": self.configured_mode,
                **self.db.funnel(since, REFUSAL_KINDS)}

    # --- evidence --------------------------------------------------------------------
    def signup_evidence(self, account: str) -> SignupEvidence | None:
        """The account's sign-up record (domain, prefix, fingerprint, time, waitlist), or
        None for accounts made by the CLI or admin API."""
        return self.db.evidence(account)

    def all_evidence(self) -> list[SignupEvidence]:
        """Every account's sign-up record, oldest first (detection's ``signup_evidence``)."""
        return self.db.all_evidence()

    # --- step-up ---------------------------------------------------------------------
    def _sign(self, *parts: str) -> str:
        return hmac.new(self._key, "\n".join(("step-up", *parts)).encode(),
                        hashlib.sha256).hexdigest()

    def step_up_url(self, account: str) -> str | None:
        """The self-serve URL for a challenged account (signed, valid an hour), or None
        when this gateway has no public URL to point at."""
        if not self.public_url or not self._key:
            return None
        exp = str(int(self.clock() + STEP_UP_LINK_TTL))
        query = urllib.parse.urlencode({"account": account, "exp": exp,
                                        "sig": self._sign(account, exp)})
        return f"{self.public_url}/signup/step-up?{query}"

    def check_step_up_link(self, account: object, exp: object, sig: object) -> str:
        """The account a step-up link names; 400 when forged or expired."""
        if not all(isinstance(v, str) and v for v in (account, exp, sig)):
            raise errors.InvalidRequest("this step-up link is incomplete", param="sig",
                                        code="invalid_step_up_link")
        if not hmac.compare_digest(sig, self._sign(account, exp)):
            raise errors.InvalidRequest("this step-up link is not valid", param="sig",
                                        code="invalid_step_up_link")
        if not exp.isdigit() or int(exp) < self.clock():
            raise errors.InvalidRequest("this step-up link expired; send a request to the "
                                        "API again for a new one", param="exp",
                                        code="step_up_link_expired")
        return account

    def _challenged(self, account: str) -> None:
        action = self.policy.current_action(account) if self.policy is not None else None
        if action is None or action.kind != "challenge":
            raise errors.NotFound("this account has no pending verification",
                                  param="account", code="challenge_not_found")

    def masked_email(self, account: str) -> str | None:
        ev = self.db.evidence(account)
        if ev is None:
            return None
        local, _, domain = ev.email.partition("@")
        return f"{local[:1]}{'*' * max(1, len(local) - 1)}@{domain}"

    async def step_up_start(self, account: str) -> str:
        """Begin step-up: mail a confirmation link (or hand over to the webhook); returns
        ``mailed`` or the identity provider's ``redirect_url``."""
        self._challenged(account)
        now = self.clock()
        if self.settings.verification_webhook:
            return await self._webhook_start(account, now)
        evidence = await asyncio.to_thread(self.db.evidence, account)
        if evidence is None:
            raise errors.PermissionDenied(
                "this account has no email address on file; contact the operator to "
                "verify it", code="step_up_unavailable")
        last = await asyncio.to_thread(self.db.last_token_at, "stepup", account)
        if last is not None and now - last < STEP_UP_MAIL_INTERVAL:
            wait = int(STEP_UP_MAIL_INTERVAL - (now - last)) + 1
            raise errors.RateLimited(f"a confirmation link was sent already; check your "
                                     f"inbox or try again in {wait} s",
                                     code="step_up_rate_limited",
                                     headers={"Retry-After": str(wait)})
        token = await asyncio.to_thread(self._token, "stepup", request_id=None,
                                        account=account, now=now)
        self._mail(evidence.email, "Confirm it is you",
                   "Your API account was asked to verify itself again. Open this link to "
                   "continue (it works once):\n\n"
                   f"{self.public_url}/signup/step-up/confirm?token={token}\n")
        await asyncio.to_thread(self._audit, account, "step_up_mailed",
                                "confirmation link mailed to the sign-up address")
        return "mailed"

    async def step_up_confirm(self, token: object) -> tuple[str, str]:
        """The emailed link was opened: returns the account and a token for the puzzle."""
        if not isinstance(token, str) or not 20 <= len(token) <= 100:
            raise _bad_link()
        now = self.clock()
        used = await asyncio.to_thread(self.db.consume_token, token_hash(token), ("stepup",),
                                       now)
        if used is None or used.account is None:
            raise _bad_link()
        self._challenged(used.account)
        puzzle_token = await asyncio.to_thread(self._token, "stepup_pow", request_id=None,
                                               account=used.account, now=now,
                                               ttl=STEP_UP_PUZZLE_TTL)
        await asyncio.to_thread(self._audit, used.account, "step_up_email_confirmed",
                                "sign-up address confirmed by link")
        return used.account, puzzle_token

    def step_up_ticket(self, token: str) -> Outcome:
        """The no-JS path of the step-up puzzle: a wait ticket at the top level."""
        return self._issue_ticket(token_hash(token), self.puzzles.max_level, "stepup")

    async def step_up_complete(self, token: object, altcha_payload: object,
                               ticket: object) -> str:
        """The harder puzzle was solved: lift the challenge; returns the account."""
        if not isinstance(token, str) or not 20 <= len(token) <= 100:
            raise _bad_link()
        await self._check_puzzle(altcha_payload, ticket, token_hash(token),
                                 self.puzzles.max_level, "stepup")
        used = await asyncio.to_thread(self.db.consume_token, token_hash(token),
                                       ("stepup_pow",), self.clock())
        if used is None or used.account is None:
            raise _bad_link()
        await asyncio.to_thread(self._lift, used.account, "step-up:email+puzzle",
                                f"email re-confirmed and level {self.puzzles.max_level} "
                                "puzzle solved")
        return used.account

    def _lift(self, account: str, author: str, reason: str) -> None:
        lifted = self.policy.lift(account, author=author, reason=reason)
        if lifted is None:
            raise errors.NotFound("this account has no pending verification",
                                  param="account", code="challenge_not_found")

    # --- step-up through an external identity provider ---------------------------------
    def _webhook_sig(self, ts: str, body: bytes) -> str:
        key = self.settings.verification_webhook_secret.reveal().encode()
        return hmac.new(key, ts.encode() + b"." + body, hashlib.sha256).hexdigest()

    async def _webhook_start(self, account: str, now: float) -> str:
        import aiohttp

        state = await asyncio.to_thread(self._token, "webhook", request_id=None,
                                        account=account, now=now)
        evidence = await asyncio.to_thread(self.db.evidence, account)
        body = orjson.dumps({
            "account": account, "email": evidence.email if evidence else None,
            "state": state, "callback_url": f"{self.public_url}/signup/step-up/callback",
            "expires_at": now + self.settings.signup_token_ttl})
        ts = str(int(time.time()))
        headers = {"content-type": "application/json",
                   "x-distillguard-signature": f"t={ts},v1={self._webhook_sig(ts, body)}"}
        try:
            timeout = aiohttp.ClientTimeout(total=self.settings.smtp_timeout)
            async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
                    self.settings.verification_webhook, data=body, headers=headers) as resp:
                reply = await resp.read()
                if resp.status >= 300:
                    raise errors.UpstreamError(
                        f"the identity provider answered {resp.status}", status=502,
                        code="step_up_provider_error")
        except (TimeoutError, aiohttp.ClientError):
            raise errors.UpstreamError("the identity provider could not be reached",
                                       status=502, code="step_up_provider_error") from None
        redirect = ""
        try:
            parsed = orjson.loads(reply) if reply else {}
            if isinstance(parsed, dict) and isinstance(parsed.get("redirect_url"), str):
                redirect = parsed["redirect_url"]
        except orjson.JSONDecodeError:
            pass
        await asyncio.to_thread(self._audit, account, "step_up_webhook",
                                "handed to the identity provider")
        return redirect or "handed_over"

    async def webhook_callback(self, body: bytes, signature: str | None) -> str:
        """The identity provider's signed verdict; lifts the challenge when verified."""
        if not self.settings.verification_webhook:
            raise errors.NotFound("no verification webhook is configured",
                                  code="not_found")
        parts = dict(p.split("=", 1) for p in (signature or "").split(",") if "=" in p)
        ts, given = parts.get("t", ""), parts.get("v1", "")
        if not ts.isdigit() or not hmac.compare_digest(given, self._webhook_sig(ts, body)):
            raise errors.AuthenticationError("the callback signature is not valid",
                                             code="invalid_signature")
        if abs(time.time() - int(ts)) > WEBHOOK_SKEW:
            raise errors.AuthenticationError("the callback signature is too old",
                                             code="invalid_signature")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise errors.InvalidRequest("callback body is not JSON", code="invalid_json") \
                from None
        if not isinstance(data, dict) or not isinstance(data.get("state"), str) \
                or not isinstance(data.get("verified"), bool):
            raise errors.InvalidRequest("callback needs 'state' (string) and 'verified' "
                                        "(boolean)", param="state")
        used = await asyncio.to_thread(self.db.consume_token, token_hash(data["state"]),
                                       ("webhook",), self.clock())
        if used is None or used.account is None:
            raise _bad_link()
        if not data["verified"]:
            await asyncio.to_thread(self._audit, used.account, "step_up_failed",
                                    "the identity provider did not verify the account",
                                    "step-up:webhook")
            return used.account
        await asyncio.to_thread(self._lift, used.account, "step-up:webhook",
                                "verified by the identity provider")
        return used.account

    # --- metrics ---------------------------------------------------------------------
    def render_metrics(self) -> bytes:
        """Sign-up lines for /metrics (fixed label sets)."""
        tripped = self.mode() == "waitlist" and self.configured_mode != "waitlist"
        out = ["# HELP distillguard_signup_decisions_total Screened sign-up attempts, by "
               "decision and code.",
               "# TYPE distillguard_signup_decisions_total counter"]
        for (decision, code), n in sorted(self.decisions.items()):
            out.append(f'distillguard_signup_decisions_total{{decision="{decision}",'
                       f'code="{code}"}} {n}')
        out += ["# HELP distillguard_signup_puzzle_failures_total Sign-up puzzle answers "
                "refused, by code.",
                "# TYPE distillguard_signup_puzzle_failures_total counter"]
        for code, n in sorted(self.puzzle_failures.items()):
            out.append(f'distillguard_signup_puzzle_failures_total{{code="{code}"}} {n}')
        out += ["# HELP distillguard_signup_breaker_open 1 while the sign-up circuit "
                "breaker holds sign-up in waitlist mode.",
                "# TYPE distillguard_signup_breaker_open gauge",
                f"distillguard_signup_breaker_open {int(tripped)}",
                "# HELP distillguard_signup_mode Sign-up mode in force (1 for the mode).",
                "# TYPE distillguard_signup_mode gauge"]
        current = self.mode()
        for mode in MODES:
            out.append(f'distillguard_signup_mode{{mode="{mode}"}} {int(mode == current)}')
        if self.mailer is not None:
            out += ["# HELP distillguard_signup_mail_total Sign-up mails, by result.",
                    "# TYPE distillguard_signup_mail_total counter",
                    f'distillguard_signup_mail_total{{result="sent"}} {self.mailer.sent}',
                    f'distillguard_signup_mail_total{{result="failed"}} {self.mailer.failed}']
        return ("\n".join(out) + "\n").encode()


def _refusal(verdict: Verdict) -> errors.APIError:
    if verdict.code == "signup_rate_limited":
        retry = str(max(1, int((verdict.retry_after or 60) + 0.999)))
        return errors.RateLimited("too many sign-ups from this network or client; try "
                                  f"again in {retry} s", code=verdict.code,
                                  headers={"Retry-After": retry})
    return errors.InvalidRequest("sign-up with this email provider is not accepted; use "
                                 "another address", param="email", code=verdict.code)


def _bad_link() -> errors.APIError:
    return errors.InvalidRequest("this link is not valid: it was used already, it expired, "
                                 "or it was copied incompletely", param="token",
                                 code="invalid_token")

"""The /signup routes (API and pages) and the /admin/signup routes.

Each public route takes JSON (answers JSON, errors in the OpenAI shape) or, from the
pages, an ``application/x-www-form-urlencoded`` form (answers a page, errors shown on
the page with the same status). Decisions are ``SignupService``'s.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from importlib import resources
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from distillguard.gateway import errors, queries
from distillguard.gateway.admin import _require_admin
from distillguard.gateway.middleware import context_of
from distillguard.gateway.routes import json_response, read_json, runtime_of
from distillguard.signup import pages
from distillguard.signup.service import Attempt, Outcome, SignupService

MAX_FORM_BYTES = 16_384
FORM = "application/x-www-form-urlencoded"
_NO_STORE = {"cache-control": "no-store", "referrer-policy": "no-referrer"}
_STATIC = {"altcha.min.js": "text/javascript; charset=utf-8",
           "altcha.LICENSE.txt": "text/plain; charset=utf-8"}


def service_of(request: Request) -> SignupService:
    return runtime_of(request).signup


def _is_form(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == FORM


async def _body(request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The JSON object or form fields of the request; 400 naming an unknown JSON field."""
    if not _is_form(request):
        body = await read_json(request, MAX_FORM_BYTES)
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            raise errors.InvalidRequest(f"unknown field {unknown[0]!r}; this endpoint takes "
                                        f"{', '.join(allowed)}", param=unknown[0])
        return body
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_FORM_BYTES:
                raise errors.PayloadTooLarge(f"form is above {MAX_FORM_BYTES} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise errors.InvalidRequest("client disconnected", code="client_disconnected") \
            from None
    try:
        fields = urllib.parse.parse_qs(b"".join(chunks).decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        raise errors.InvalidRequest("form is not valid UTF-8") from None
    # Forms may carry fields the browser adds; only the allowed ones are read.
    return {k: v[0] for k, v in fields.items() if k in allowed}


def _html(text: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return HTMLResponse(text, status_code=status, headers={**_NO_STORE, **(headers or {})})


def _client(request: Request) -> str | None:
    ctx = context_of(request.scope)
    if ctx is not None:
        return ctx.client_addr
    return request.client.host if request.client else None


# --- sign-up ---------------------------------------------------------------------------
async def signup_page(request: Request) -> Response:
    service = service_of(request)
    return _html(pages.signup_form(mode=service.mode(),
                                   wait=service.puzzles.wait_seconds(0)))


async def challenge(request: Request) -> Response:
    purpose = request.query_params.get("purpose", "signup")
    if purpose not in ("signup", "stepup"):
        raise errors.InvalidRequest("'purpose' must be signup or stepup", param="purpose")
    response = json_response(await service_of(request).challenge(_client(request), purpose))
    response.headers["cache-control"] = "no-store"
    return response


def _outcome_json(outcome: Outcome) -> Response:
    if outcome.status == "created":
        return json_response({"status": "created", "account": outcome.account,
                              "api_key": outcome.api_key}, status=201)
    if outcome.status == "wait":
        return json_response({"status": "wait", "ticket": outcome.ticket,
                              "wait_seconds": outcome.wait}, status=202)
    return json_response({"status": outcome.status}, status=202)


async def signup(request: Request) -> Response:
    service = service_of(request)
    form = _is_form(request)
    email = ""
    body: dict[str, Any] = {}
    try:
        body = await _body(request, ("email", "altcha", "ticket"))
        email = body.get("email") if isinstance(body.get("email"), str) else ""
        outcome = await service.submit(Attempt(
            email=body.get("email"), altcha=body.get("altcha"), ticket=body.get("ticket"),
            client_addr=_client(request), headers=tuple(request.scope["headers"]),
            form=form))
    except errors.APIError as exc:
        if not form:
            raise
        if exc.code in ("ticket_not_ready",):
            fields = {"email": email, "ticket": body.get("ticket", "")}
            return _html(pages.wait_form(action="/signup", fields=fields, wait=0,
                                         error=exc.message), exc.status, exc.headers)
        return _html(pages.signup_form(mode=service.mode(), error=exc.message, email=email,
                                       wait=service.puzzles.wait_seconds(0)),
                     exc.status, exc.headers)
    if not form:
        return _outcome_json(outcome)
    if outcome.status == "wait":
        return _html(pages.wait_form(action="/signup", wait=outcome.wait or 0,
                                     fields={"email": email, "ticket": outcome.ticket or ""}),
                     202)
    if outcome.status == "created":
        return _html(pages.key_page(outcome.api_key or "", outcome.account or ""), 201)
    return _html(pages.sent_page(), 202)


def _verify_page(outcome: Outcome) -> Response:
    if outcome.status == "created":
        return _html(pages.key_page(outcome.api_key or "", outcome.account or ""))
    if outcome.status == "waitlisted":
        return _html(pages.message_page(
            "Address confirmed", "Thank you. Sign-ups are reviewed by an administrator "
            "at the moment; you will get an email with your key once yours is approved."))
    return _html(pages.message_page("Already registered", "This address already has an "
                                    "account. Use its existing key."))


async def verify_page(request: Request) -> Response:
    try:
        outcome = await service_of(request).verify(request.query_params.get("token"))
    except errors.APIError as exc:
        return _html(pages.error_page("This link does not work", exc.message), exc.status)
    return _verify_page(outcome)


async def verify(request: Request) -> Response:
    form = _is_form(request)
    try:
        body = await _body(request, ("token",))
        outcome = await service_of(request).verify(body.get("token"))
    except errors.APIError as exc:
        if not form:
            raise
        return _html(pages.error_page("This link does not work", exc.message), exc.status)
    if form:
        return _verify_page(outcome)
    if outcome.status == "created":
        return json_response({"status": "created", "account": outcome.account,
                              "api_key": outcome.api_key}, status=201)
    return json_response({"status": outcome.status})


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _STATIC:
        raise errors.NotFound(f"Unknown path {request.url.path}")
    data = resources.files("distillguard.signup").joinpath("static", name).read_bytes()
    return Response(data, media_type=_STATIC[name],
                    headers={"cache-control": "public, max-age=86400"})


# --- step-up ---------------------------------------------------------------------------
async def step_up_page(request: Request) -> Response:
    service = service_of(request)
    q = request.query_params
    try:
        account = service.check_step_up_link(q.get("account"), q.get("exp"), q.get("sig"))
    except errors.APIError as exc:
        return _html(pages.error_page("This link does not work", exc.message), exc.status)
    masked = await asyncio.to_thread(service.masked_email, account)
    return _html(pages.step_up_start(account=account, exp=q["exp"], sig=q["sig"],
                                     masked=masked,
                                     webhook=bool(service.settings.verification_webhook)))


async def step_up(request: Request) -> Response:
    service = service_of(request)
    form = _is_form(request)
    body: dict[str, Any] = {}
    try:
        body = await _body(request, ("account", "exp", "sig"))
        account = service.check_step_up_link(body.get("account"), body.get("exp"),
                                             body.get("sig"))
        result = await service.step_up_start(account)
    except errors.APIError as exc:
        if not form:
            raise
        return _html(pages.error_page("Verification could not start", exc.message),
                     exc.status, exc.headers)
    redirect = result if result.startswith(("https://", "http://")) else None
    if not form:
        return json_response({"status": "redirect" if redirect else result,
                              "redirect_url": redirect}, status=202)
    if redirect:
        return RedirectResponse(redirect, status_code=303)
    if result == "handed_over":
        return _html(pages.message_page("Continue with the identity provider",
                                        "The identity provider will contact you."), 202)
    return _html(pages.message_page("Check your inbox", "We sent a link to the address "
                                    "this account signed up with. It works once."), 202)


async def step_up_confirm(request: Request) -> Response:
    service = service_of(request)
    try:
        _, token = await service.step_up_confirm(request.query_params.get("token"))
    except errors.APIError as exc:
        return _html(pages.error_page("This link does not work", exc.message), exc.status)
    return _html(pages.step_up_puzzle(token=token,
                                      wait=service.puzzles.wait_seconds(
                                          service.puzzles.max_level)))


async def step_up_complete(request: Request) -> Response:
    service = service_of(request)
    form = _is_form(request)
    body: dict[str, Any] = {}
    try:
        body = await _body(request, ("token", "altcha", "ticket"))
        token = body.get("token")
        if form and body.get("altcha") in (None, "") and body.get("ticket") in (None, ""):
            if not isinstance(token, str) or not token:
                raise errors.InvalidRequest("'token' is missing", param="token",
                                            code="invalid_token")
            outcome = service.step_up_ticket(token)
            return _html(pages.wait_form(action="/signup/step-up/complete",
                                         wait=outcome.wait or 0,
                                         fields={"token": token,
                                                 "ticket": outcome.ticket or ""}), 202)
        account = await service.step_up_complete(token, body.get("altcha"),
                                                 body.get("ticket"))
    except errors.APIError as exc:
        if not form:
            raise
        if exc.code == "ticket_not_ready":
            return _html(pages.wait_form(action="/signup/step-up/complete", wait=0,
                                         fields={"token": str(body.get("token", "")),
                                                 "ticket": str(body.get("ticket", ""))},
                                         error=exc.message), exc.status)
        return _html(pages.error_page("Verification failed", exc.message), exc.status)
    if form:
        return _html(pages.message_page("Account verified", "Thank you: the account can "
                                        "use the API again."))
    return json_response({"status": "verified", "account": account})


async def step_up_callback(request: Request) -> Response:
    service = service_of(request)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise errors.PayloadTooLarge(f"callback is above {MAX_FORM_BYTES} bytes")
    account = await service.webhook_callback(body,
                                             request.headers.get("x-distillguard-signature"))
    return json_response({"status": "received", "account": account})


# --- admin -----------------------------------------------------------------------------
def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise errors.InvalidRequest("'limit' must be an integer in [1, 10000]", param="limit")
    return int(raw)


async def admin_requests(request: Request) -> Response:
    _require_admin(request)
    service = service_of(request)
    q = request.query_params
    rows = await asyncio.to_thread(service.db.requests, state=q.get("state"),
                                   decision=q.get("decision"), limit=_limit(request))
    return json_response({"object": "list", "data": [r.to_dict() for r in rows]})


async def admin_waitlist(request: Request) -> Response:
    _require_admin(request)
    rows = await asyncio.to_thread(service_of(request).waitlist, _limit(request))
    return json_response({"object": "list", "data": [r.to_dict() for r in rows]})


async def _admin_author(request: Request, body: dict[str, Any]) -> str:
    name = body.get("analyst", "admin")
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise errors.InvalidRequest("'analyst' must be a short name", param="analyst")
    return f"analyst:{name.strip()}"


async def _optional_body(request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    if request.headers.get("content-length", "0") in ("", "0"):
        return {}
    return await _body(request, allowed)


async def admin_approve(request: Request) -> Response:
    _require_admin(request)
    body = await _optional_body(request, ("analyst",))
    author = await _admin_author(request, body)
    req = await asyncio.to_thread(service_of(request).approve,
                                  request.path_params["request_id"], author)
    return json_response(req.to_dict())


async def admin_deny(request: Request) -> Response:
    _require_admin(request)
    body = await _optional_body(request, ("analyst", "reason"))
    author = await _admin_author(request, body)
    reason = body.get("reason", "denied by an administrator")
    if not isinstance(reason, str) or not reason.strip():
        raise errors.InvalidRequest("'reason' must be a non-empty string", param="reason")
    req = await asyncio.to_thread(service_of(request).deny,
                                  request.path_params["request_id"], author, reason.strip())
    return json_response(req.to_dict())


async def admin_funnel(request: Request) -> Response:
    _require_admin(request)
    service = service_of(request)
    raw = request.query_params.get("since")
    try:
        since = service.clock() - 86400.0 if raw is None else float(raw)
    except ValueError:
        raise errors.InvalidRequest("'since' must be a Unix time in seconds",
                                    param="since") from None
    if since != since or since in (float("inf"), float("-inf")):
        raise errors.InvalidRequest("'since' must be a finite Unix time in seconds",
                                    param="since")
    funnel = await asyncio.to_thread(queries.signup_funnel, runtime_of(request), since)
    return json_response(funnel)


async def admin_breaker(request: Request) -> Response:
    _require_admin(request)
    service = service_of(request)
    now = service.clock()
    state = await asyncio.to_thread(service.breaker.state, now)
    pressure = await asyncio.to_thread(service.breaker.pressure, now)
    return json_response({**state.to_dict(), "mode": service.mode(),
                          "configured_mode": service.configured_mode,
                          "pressure": pressure})


async def admin_reopen(request: Request) -> Response:
    _require_admin(request)
    service = service_of(request)
    body = await _optional_body(request, ("analyst",))
    author = await _admin_author(request, body)
    state = await service.reopen(author)
    return json_response({**state.to_dict(), "mode": service.mode()})


async def admin_evidence(request: Request) -> Response:
    _require_admin(request)
    account = request.path_params["account"]
    ev = await asyncio.to_thread(service_of(request).signup_evidence, account)
    if ev is None:
        raise errors.NotFound(f"account {account!r} did not sign up through /signup",
                              param="account", code="signup_evidence_not_found")
    return json_response(ev.to_dict())


ROUTES = [
    Route("/signup", signup_page, methods=["GET"]),
    Route("/signup", signup, methods=["POST"]),
    Route("/signup/challenge", challenge, methods=["GET"]),
    Route("/signup/verify", verify_page, methods=["GET"]),
    Route("/signup/verify", verify, methods=["POST"]),
    Route("/signup/static/{name}", static, methods=["GET"]),
    Route("/signup/step-up", step_up_page, methods=["GET"]),
    Route("/signup/step-up", step_up, methods=["POST"]),
    Route("/signup/step-up/confirm", step_up_confirm, methods=["GET"]),
    Route("/signup/step-up/complete", step_up_complete, methods=["POST"]),
    Route("/signup/step-up/callback", step_up_callback, methods=["POST"]),
    Route("/admin/signup/requests", admin_requests, methods=["GET"]),
    Route("/admin/signup/waitlist", admin_waitlist, methods=["GET"]),
    Route("/admin/signup/requests/{request_id}/approve", admin_approve, methods=["POST"]),
    Route("/admin/signup/requests/{request_id}/deny", admin_deny, methods=["POST"]),
    Route("/admin/signup/funnel", admin_funnel, methods=["GET"]),
    Route("/admin/signup/breaker", admin_breaker, methods=["GET"]),
    Route("/admin/signup/breaker/reopen", admin_reopen, methods=["POST"]),
    Route("/admin/signup/evidence/{account}", admin_evidence, methods=["GET"]),
]

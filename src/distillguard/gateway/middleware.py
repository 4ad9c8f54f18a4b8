"""The request pipeline as plain ASGI middleware; ``app.build_app`` composes it.

Order, outermost first: ``ErrorsAndEvents`` (OpenAI-shaped errors, one RequestEvent and
metrics per API request) → ``Authenticate`` (key → account) → ``Admission`` (rate
limits) → the routes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from distillguard.gateway import errors
from distillguard.gateway.context import RequestContext
from distillguard.gateway.state import SIM_TIME_HEADER

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from distillguard.gateway.state import Gateway

log = logging.getLogger("distillguard.gateway")

API_PREFIX = "/v1/"


def context_of(scope: Scope) -> RequestContext | None:
    return scope.get("state", {}).get("dg")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def send_error(send: Send, exc: errors.APIError) -> None:
    status, headers, body = errors.render(exc)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ErrorsAndEvents:
    """Turns every failure into an OpenAI error and every API request into one event.

    The event is submitted after the last byte of the response was handed to the
    server, so the request is still in flight until its event is queued: a clean
    shutdown waits for in-flight requests, then drains the queue.
    """

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        api = path.startswith(API_PREFIX)
        ctx = RequestContext(
            endpoint=path if api else "other",
            client_addr=self.gateway.client_address.of_scope(scope),
            user_agent=_header(scope, b"user-agent"),
        )
        if self.gateway.simulation:
            ctx.ts = self.gateway.clock.arrival(_header(scope, SIM_TIME_HEADER), ctx.ts)
        scope.setdefault("state", {})["dg"] = ctx
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                ctx.status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except errors.APIError as exc:
            self._note_error(ctx, exc)
            if not started:
                ctx.status = exc.status
                await send_error(send, exc)
        except Exception:
            log.exception("unhandled error on %s %s (request %s)", scope.get("method"), path,
                          ctx.request_id)
            exc = errors.ServerError(f"internal error; request id {ctx.request_id}")
            self._note_error(ctx, exc)
            if not started:
                ctx.status = exc.status
                await send_error(send, exc)
        finally:
            if api:
                self.gateway.record(ctx)

    @staticmethod
    def _note_error(ctx: RequestContext, exc: errors.APIError) -> None:
        ctx.error_type = exc.type
        ctx.error_code = exc.code


class Authenticate:
    """Resolves the bearer key of API requests to an account; 401 otherwise."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        header = _header(scope, b"authorization")
        if not header:
            raise errors.AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
                code="missing_api_key")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise errors.AuthenticationError(
                "Malformed Authorization header; expected 'Bearer YOUR_KEY'.")
        record = await self.gateway.keys.aget(token)
        if record is None:
            raise errors.AuthenticationError("Incorrect API key provided.")
        if record.revoked_at is not None:
            raise errors.AuthenticationError("This API key has been revoked.",
                                             code="revoked_api_key")
        ctx = context_of(scope)
        ctx.account = record.account
        ctx.key_id = record.key_id
        ctx.key_created_at = record.created_at
        await self.app(scope, receive, send)


NEUTRAL_BLOCK = "This account cannot use the API. Contact support if you think this is a mistake."


class Admission:
    """The account's current action, then per-key rate limits, before any work is done.

    An action set by a rule or an analyst applies here on the account's next request.
    """

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = context_of(scope) if scope["type"] == "http" else None
        policy = self.gateway.policy
        if policy is not None and ctx is not None and ctx.account is not None:
            decision = policy.admit(ctx.account)
            action = decision.action
            if action is not None:
                ctx.action = action.kind
            if not decision.allowed:
                if action.kind == "block":
                    raise errors.PermissionDenied(NEUTRAL_BLOCK, code="account_blocked")
                if action.kind == "challenge":
                    signup = getattr(self.gateway, "signup", None)
                    url = signup.step_up_url(ctx.account) if signup is not None else None
                    raise errors.PermissionDenied(
                        "This account must be verified again before it can use the API."
                        + (f" Verify it at {url}" if url else ""),
                        code="account_challenge_required",
                        headers={"Link": f'<{url}>; rel="verify"'} if url else None)
                retry = max(1, int((decision.retry_after or 1.0) + 0.999))
                raise errors.RateLimited(
                    f"Rate limit reached for this account. Try again in {retry} s.",
                    headers={"Retry-After": str(retry)})
        limiter = self.gateway.limiter
        if limiter is not None and ctx is not None:
            if ctx.key_id is not None:
                decision = await limiter.check(ctx.key_id)
                if not decision.allowed:
                    retry = max(1, int(decision.retry_after + 0.999))
                    raise errors.RateLimited(
                        f"Rate limit reached for this key ({decision.reason}). "
                        f"Try again in {retry} s.",
                        headers={"Retry-After": str(retry)})
        await self.app(scope, receive, send)

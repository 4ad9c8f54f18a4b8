"""The request pipeline as plain ASGI middleware; ``app.build_app`` composes it.

Order, outermost first: ``ErrorsAndEvents`` (OpenAI-shaped errors, one RequestEvent and
metrics per API request) → ``Authenticate`` (key → account) → ``Admission`` (the
functions of ``gateway.admission``: event backlog, account action, rate limits) → the
routes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from distillguard.gateway import admission, errors
from distillguard.gateway.context import RequestContext

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from distillguard.gateway.runtime import Runtime

log = logging.getLogger("distillguard.gateway")

API_PREFIX = "/v1/"


def context_of(scope: Scope) -> RequestContext:
    """The request's context, set by ``ErrorsAndEvents`` (outermost, so always there)."""
    ctx = scope.get("state", {}).get("dg")
    if not isinstance(ctx, RequestContext):
        raise RuntimeError("request context missing: ErrorsAndEvents must run first")
    return ctx


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
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

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        api = path.startswith(API_PREFIX)
        ctx = self.runtime.new_context(
            path if api else "other",
            self.runtime.client_address.of_scope(scope),
            _header(scope, b"user-agent"),
        )
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
            internal = errors.ServerError(f"internal error; request id {ctx.request_id}")
            self._note_error(ctx, internal)
            if not started:
                ctx.status = internal.status
                await send_error(send, internal)
        finally:
            if api:
                self.runtime.record(ctx)

    @staticmethod
    def _note_error(ctx: RequestContext, exc: errors.APIError) -> None:
        ctx.error_type = exc.type
        ctx.error_code = exc.code


class Authenticate:
    """Resolves the bearer key of API requests to an account; 401 otherwise."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

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
        record = await self.runtime.keys.aget(token)
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


class Admission:
    """May the request proceed now? See ``gateway.admission`` (replay calls the same).

    An action set by a rule or an analyst applies here on the account's next request.
    """

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        runtime = self.runtime
        ctx = context_of(scope)
        admission.check_backlog(runtime.writer)
        admission.admit(runtime.policy, ctx, step_up_url=runtime.signup.step_up_url
                        if runtime.signup is not None else None)
        if runtime.limiter is not None:
            await admission.check_rate(runtime.limiter, ctx)
        await self.app(scope, receive, send)

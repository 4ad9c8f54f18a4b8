"""The OpenAI-compatible endpoints: chat completions, completions, models."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from distillguard.backends.base import (
    BackendError,
    Completion,
    GenerationRequest,
    StreamDelta,
    StreamEnd,
    StreamItem,
)
from distillguard.detection.features import request_features
from distillguard.forensics import canary
from distillguard.gateway import errors, limits, schema
from distillguard.gateway.context import RequestContext
from distillguard.gateway.middleware import context_of
from distillguard.gateway.runtime import Runtime
from distillguard.policy.degrade import strip_reasoning

JSON = "application/json"


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON)


def runtime_of(request: Request) -> Runtime:
    """The runtime of the app serving ``request``."""
    runtime: Runtime = request.app.state.runtime
    return runtime


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, refusing bodies over ``limit`` bytes early."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            too_big = int(length) > limit
        except ValueError:
            raise errors.InvalidRequest("invalid Content-Length header") from None
        if too_big:
            raise errors.PayloadTooLarge(
                f"request body is {length} bytes, above this server's limit of {limit}")
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise errors.PayloadTooLarge(
                    f"request body is above this server's limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise errors.InvalidRequest("client disconnected before sending the whole body",
                                    code="client_disconnected") from None
    raw = b"".join(chunks)
    if not raw.strip():
        raise errors.InvalidRequest("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = "is not valid UTF-8" if "utf-8" in str(exc).lower() else "is not valid JSON"
        raise errors.InvalidRequest(f"request body {reason}: {exc}",
                                    code="invalid_json") from None
    if not isinstance(body, dict):
        raise errors.InvalidRequest("request body must be a JSON object",
                                    code="invalid_json")
    return body


def _check_model(runtime: Runtime, request: GenerationRequest) -> None:
    served = runtime.backend.models()
    if request.model not in served:
        raise errors.NotFound(
            f"The model '{request.model}' does not exist here. Models served: "
            f"{', '.join(served)}.", param="model", code="model_not_found")


def _apply_watermark(runtime: Runtime, ctx: RequestContext, request: GenerationRequest) -> None:
    # The server alone decides: nothing in the request body reaches this choice.
    if runtime.watermark is None:
        return
    strength = 1.0
    if ctx.action == "degrade" and ctx.account is not None:
        strength = runtime.policy.watermark_strength(ctx.account)
    sampler, record = runtime.watermark.sampler_for(ctx.account, strength=strength)
    request.watermark = sampler
    ctx.watermark = record


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _chat_body(rid: str, created: int, model: str, result: Completion) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"index": c.index, "finish_reason": c.finish_reason, "logprobs": None,
                     "message": {"role": "assistant", "content": c.text}}
                    for c in result.choices],
        "usage": _usage(result.prompt_tokens, result.completion_tokens),
    }


def _text_body(rid: str, created: int, model: str, result: Completion) -> dict[str, Any]:
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"index": c.index, "text": c.text, "finish_reason": c.finish_reason,
                     "logprobs": None} for c in result.choices],
        "usage": _usage(result.prompt_tokens, result.completion_tokens),
    }


class _ChunkWriter:
    """Builds the SSE chunks of one stream in the OpenAI chunk format of its endpoint."""

    def __init__(self, kind: str, rid: str, created: int, model: str) -> None:
        self.chat = kind == "chat"
        self.head = {"id": rid, "object": "chat.completion.chunk" if self.chat
                     else "text_completion", "created": created, "model": model,
                     "system_fingerprint": None}

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({**self.head, "choices": choices, **extra}) + b"\n\n"

    def opening(self, n: int) -> bytes | None:
        if not self.chat:
            return None
        return self._event([{"index": i, "delta": {"role": "assistant", "content": ""},
                             "logprobs": None, "finish_reason": None} for i in range(n)])

    def delta(self, item: StreamDelta) -> bytes:
        if self.chat:
            delta = {"content": item.text} if item.text else {}
            choice = {"index": item.index, "delta": delta, "logprobs": None,
                      "finish_reason": item.finish_reason}
        else:
            choice = {"index": item.index, "text": item.text, "logprobs": None,
                      "finish_reason": item.finish_reason}
        return self._event([choice])

    def usage(self, end: StreamEnd) -> bytes:
        return self._event([], usage=_usage(end.prompt_tokens, end.completion_tokens))


async def _aclose(stream: AsyncIterator[StreamItem]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


async def _degraded(stream: AsyncIterator[StreamItem]) -> AsyncIterator[StreamItem]:
    """A stream whose choices arrive whole, each with its reasoning trace stripped.

    A trace can only be recognised once its end is seen, so a degraded account's
    stream holds each choice back until that choice is finished.
    """
    held: dict[int, list[str]] = {}
    try:
        async for item in stream:
            if isinstance(item, StreamDelta):
                held.setdefault(item.index, []).append(item.text)
                if item.finish_reason is None:
                    continue
                item = StreamDelta(item.index, strip_reasoning("".join(held.pop(item.index))),
                                   item.finish_reason)
            yield item
    finally:
        await _aclose(stream)


async def _open_stream(runtime: Runtime, ctx: RequestContext, request: GenerationRequest,
                       marker: str | None = None) -> tuple[AsyncIterator[StreamItem],
                                                           StreamItem | None]:
    """Start the backend's stream and wait for its first item before sending headers,
    so that a request the backend refuses (prompt too long, upstream down) still gets
    a plain HTTP error instead of a stream that fails at once."""
    stream = runtime.backend.stream(request)
    if ctx.action == "degrade":
        stream = _degraded(stream)
    if marker:
        stream = canary.mark_stream(stream, marker)
    try:
        return stream, await anext(stream)
    except StopAsyncIteration:
        return stream, None
    except BackendError as exc:
        await _aclose(stream)
        raise errors.from_backend(exc) from None
    except BaseException:
        await _aclose(stream)
        raise


async def _sse(ctx: RequestContext, request: GenerationRequest,
               stream: AsyncIterator[StreamItem], first: StreamItem | None,
               writer: _ChunkWriter, include_usage: bool) -> AsyncIterator[bytes]:
    async def items() -> AsyncIterator[StreamItem]:
        if first is not None:
            yield first
        async for item in stream:
            yield item

    opening = writer.opening(request.n)
    if opening:
        yield opening
    try:
        async for item in items():
            if isinstance(item, StreamEnd):
                ctx.prompt_tokens = item.prompt_tokens
                ctx.completion_tokens = item.completion_tokens
                if include_usage:
                    yield writer.usage(item)
            else:
                yield writer.delta(item)
    except BackendError as exc:
        # Headers are sent: the only way left to tell the client is an error event.
        api_error = errors.from_backend(exc)
        ctx.error_type, ctx.error_code = api_error.type, api_error.code
        yield errors.sse_error_event(api_error)
        return
    finally:
        await _aclose(stream)
        _charge(ctx, request)
    yield b"data: [DONE]\n\n"


def _charge(ctx: RequestContext, request: GenerationRequest) -> None:
    """Charge what the backend generated, whatever the client did: a stream closed
    early or a client gone before the answer still pays for the tokens produced."""
    usage = request.usage
    ctx.prompt_tokens = max(ctx.prompt_tokens, usage.prompt_tokens)
    ctx.completion_tokens = max(ctx.completion_tokens, usage.completion_tokens)


async def _generate(request: Request, parse: Callable[..., GenerationRequest],
                    render: Callable[..., dict[str, Any]]) -> Response | limits.Held:
    runtime = runtime_of(request)
    settings = runtime.settings
    ctx = context_of(request.scope)
    body = await read_json(request, settings.max_body_bytes)
    ctx.params = schema.recorded_params(body)
    if isinstance(body.get("model"), str):
        ctx.model = body["model"]
    gen = parse(body, runtime.limits)
    limits.check_cost(gen, settings.max_request_tokens)
    gen.account = ctx.account
    gen.priority = limits.standing(ctx, settings.established_account_age, time.time())
    ctx.prompt = schema.prompt_text(gen)
    ctx.features = request_features(gen.messages, gen.prompt, body)
    _check_model(runtime, gen)
    _apply_watermark(runtime, ctx, gen)
    marker = canary.marker_for(runtime, ctx, gen)
    # The slot and the token reservation are held until the last byte is sent (a
    # stream's too), then released and settled to what was generated.
    release = runtime.concurrency.acquire(ctx.account)
    try:
        settle = await _reserve_tokens(runtime, ctx, gen)
    except BaseException:
        release()
        raise

    def finish() -> None:
        release()
        settle()

    try:
        response = await _respond(request, runtime, ctx, gen, body, render, marker)
    except BaseException:
        finish()
        raise
    return limits.Held(response, finish)


async def _reserve_tokens(runtime: Runtime, ctx: RequestContext,
                          gen: GenerationRequest) -> Callable[[], None]:
    """Hold the request's worst case against the key's TPM budget (429 if it does not
    fit); returns the function that settles it to the tokens charged on ``ctx``."""
    limiter = runtime.limiter
    if limiter is None or ctx.key_id is None:
        return _nothing
    # A prompt is at most about one token per 3 bytes; settling corrects the guess.
    worst = gen.n * gen.max_tokens + len((ctx.prompt or "").encode()) // 3 + 1
    decision, reservation = await limiter.reserve(ctx.key_id, worst)
    if not decision.allowed:
        retry = max(1, int(decision.retry_after + 0.999))
        raise errors.RateLimited(
            f"Rate limit reached for this key ({decision.reason}): this request could use "
            f"up to {worst} tokens. Try again in {retry} s, or lower max_tokens or n.",
            headers={"Retry-After": str(retry)})
    if reservation is None:
        return _nothing
    ctx.tokens_reserved = True

    def settle() -> None:
        runtime.settle_tokens(limiter.settle(reservation,
                                             ctx.prompt_tokens + ctx.completion_tokens))

    return settle


def _nothing() -> None:
    return None


async def _respond(request: Request, runtime: Runtime, ctx: RequestContext,
                   gen: GenerationRequest, body: dict[str, Any],
                   render: Callable[..., dict[str, Any]], marker: str | None) -> Response:
    rid = ("chatcmpl-" if gen.kind == "chat" else "cmpl-") + ctx.request_id
    created = int(time.time())
    if body.get("stream"):
        ctx.stream = True
        options = body.get("stream_options") or {}
        writer = _ChunkWriter(gen.kind, rid, created, gen.model)
        stream, first = await _open_stream(runtime, ctx, gen, marker)
        return StreamingResponse(
            _sse(ctx, gen, stream, first, writer, bool(options.get("include_usage"))),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
    try:
        result = await limits.complete_unless_gone(request.receive,
                                                   runtime.backend.complete(gen))
    except BackendError as exc:
        raise errors.from_backend(exc) from None
    finally:
        _charge(ctx, gen)
    ctx.prompt_tokens = result.prompt_tokens
    ctx.completion_tokens = result.completion_tokens
    if ctx.action == "degrade":
        for choice in result.choices:
            choice.text = strip_reasoning(choice.text)
    canary.mark_completion(result, marker)
    return json_response(render(rid, created, gen.model, result))


async def chat_completions(request: Request) -> Response | limits.Held:
    return await _generate(request, schema.parse_chat, _chat_body)


async def completions(request: Request) -> Response | limits.Held:
    return await _generate(request, schema.parse_completion, _text_body)


async def list_models(request: Request) -> Response:
    runtime = runtime_of(request)
    created = int(runtime.started_at)
    return json_response({"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "distillguard"}
        for name in runtime.backend.models()]})


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def metrics(request: Request) -> Response:
    runtime = runtime_of(request)
    body = runtime.metrics.render(runtime.gauges())
    if runtime.runner is not None:
        body += ("\n".join(runtime.runner.metrics_lines()) + "\n").encode()
    signup = runtime.signup
    if signup is not None and signup.breaker is not None:
        body += signup.render_metrics()
    return Response(body, media_type="text/plain; version=0.0.4")

"""One error format (OpenAI's), the status carried on typed exceptions, one renderer.

Every failure a client can see is an ``APIError`` (or a ``BackendError`` converted into
one) and leaves through ``render`` as ``{"error": {"message", "type", "param", "code"}}``.
Statuses come from the exception class, never from matching message text.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from distillguard.backends.base import BackendError


class APIError(Exception):
    """An error the client is told about, in the OpenAI shape."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}


class InvalidRequest(APIError):
    status = 400


class AuthenticationError(APIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(APIError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(APIError):
    status = 404
    code = "not_found"


class MethodNotAllowed(APIError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(APIError):
    status = 413
    code = "request_too_large"


class UnsupportedMediaType(APIError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServerError(APIError):
    status = 500
    type = "server_error"
    code = "internal_error"


class Overloaded(APIError):
    """The gateway sheds work it cannot take now; the client should retry later."""

    status = 503
    type = "server_error"
    code = "overloaded"


class UpstreamError(APIError):
    """A backend failure: 502 (upstream failed), 503 (not ready), 504 (timed out)."""

    type = "server_error"

    def __init__(self, message: str, *, status: int, code: str, param: str | None = None):
        super().__init__(message, param=param, code=code)
        self.status = status
        if status < 500:
            self.type = "invalid_request_error"


def from_backend(exc: BackendError) -> APIError:
    """The client's error for a backend failure; a backend that sheds load (429, 503)
    says when to come back, and that becomes ``Retry-After``."""
    headers = None
    if exc.retry_after is not None and exc.status in (429, 503):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if exc.status == 429:
        return RateLimited(exc.message, code=exc.code, param=exc.param, headers=headers)
    error = UpstreamError(exc.message, status=exc.status, code=exc.code, param=exc.param)
    if headers:
        error.headers = headers
    return error


def render(exc: APIError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of the HTTP response for ``exc``."""
    body = orjson.dumps(exc.body())
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    return exc.status, headers, body


def sse_error_event(exc: APIError) -> bytes:
    """The last event of a stream that failed after it started."""
    return b"data: " + orjson.dumps(exc.body()) + b"\n\n"

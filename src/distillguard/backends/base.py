"""The ``Backend`` protocol: one call for a completion, one for a stream.

The gateway validates an OpenAI request into a ``GenerationRequest``; a backend turns it
into a ``Completion`` or an async iterator of ``StreamDelta`` followed by one
``StreamEnd``. Backends never see HTTP; the gateway never sees tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from distillguard.registry import Registry

if TYPE_CHECKING:
    from distillguard.config import Settings

FinishReason = Literal["stop", "length"]


@dataclasses.dataclass
class GenerationRequest:
    """A validated request, identical for every backend.

    ``messages`` is set for chat requests, ``prompt`` for plain completions.
    ``watermark`` is chosen by the server (never by a request field): an object with
    a ``sample_row`` method (see ``distillguard.watermark.base.RowSampler``) or None.
    ``body`` is the client's JSON body, which the upstream backend forwards.
    ``account`` and ``priority`` (higher: served first, shed last) are set by the
    gateway's admission for backends that schedule between accounts. ``usage`` is
    filled in by the backend as tokens are generated, so that a request which ends
    early (client gone, stream closed) is still charged for what it cost.
    Penalties and ``logit_bias`` act on the raw logits before the watermark does
    (``backends.sampling.adjust_logits``); penalties count the tokens generated so far.
    """

    kind: Literal["chat", "completion"]
    model: str
    max_tokens: int
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = dataclasses.field(default_factory=list)
    seed: int | None = None
    n: int = 1
    user: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = dataclasses.field(default_factory=dict)
    watermark: Any = None
    body: dict[str, Any] = dataclasses.field(default_factory=dict)
    account: str | None = None
    priority: int = 0
    usage: Usage = dataclasses.field(default_factory=lambda: Usage())


@dataclasses.dataclass
class Usage:
    """Tokens a request has cost so far; backends update it while they generate."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclasses.dataclass
class Choice:
    index: int
    text: str
    finish_reason: FinishReason
    completion_tokens: int = 0


@dataclasses.dataclass
class Completion:
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int


@dataclasses.dataclass
class StreamDelta:
    """New text for one choice; ``finish_reason`` is set on that choice's last delta."""

    index: int
    text: str
    finish_reason: FinishReason | None = None


@dataclasses.dataclass
class StreamEnd:
    """The last item of every stream: token counts over all choices."""

    prompt_tokens: int
    completion_tokens: int


StreamItem = StreamDelta | StreamEnd


class BackendError(Exception):
    """A backend failure the gateway turns into an OpenAI-shaped error.

    ``status`` is 502 for a failed upstream, 504 for a timeout, 503 when the backend is
    overloaded or not ready, 429 when the account has its share of the backend waiting,
    400 when the request cannot be served (e.g. prompt too long). ``retry_after``
    (seconds) becomes the ``Retry-After`` header of a 429 or 503.
    """

    def __init__(self, message: str, *, status: int = 502, code: str = "backend_error",
                 param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
        self.retry_after = retry_after


@runtime_checkable
class Backend(Protocol):
    """Something that generates text for OpenAI-shaped requests."""

    async def start(self) -> None:
        """Load models, open connection pools. Called once before the first request."""

    async def close(self) -> None:
        """Release everything ``start`` took. Pending requests end with BackendError."""

    def models(self) -> list[str]:
        """Public names of the models served, as listed by GET /v1/models."""

    async def complete(self, request: GenerationRequest) -> Completion:
        """Generate all ``request.n`` choices and return them with token counts."""

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """Yield ``StreamDelta`` items as text is generated, then one ``StreamEnd``."""


BackendFactory = Callable[["Settings"], Backend]

# Imported on first use, so that an upstream gateway never imports torch.
BACKENDS: Registry[BackendFactory] = Registry("backend", "distillguard.backends",
                                              missing_extra={"local": "local"})
BACKENDS.register_lazy("local", "distillguard.backends.local:LocalBackend.from_settings")
BACKENDS.register_lazy("upstream",
                       "distillguard.backends.upstream:UpstreamBackend.from_settings")
BACKENDS.register_lazy("echo", "distillguard.backends.echo:EchoBackend.from_settings")


def backend_from_settings(settings: Settings) -> Backend:
    """The backend that ``settings.backend`` names, built from the settings."""
    return BACKENDS.get(settings.backend)(settings)

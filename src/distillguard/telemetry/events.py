"""``RequestEvent``: the one record every request leaves behind, successful or not."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class RequestEvent:
    """What the gateway saw and did for one request.

    ``ts`` is the Unix time the request arrived; ``latency_ms`` runs from arrival to the
    last byte sent. ``account`` and ``key_id`` are None when authentication failed.
    ``params`` holds the sampling parameters as the client sent them (never the key).
    ``prompt`` is None when prompt retention is off. ``watermark`` records the scheme,
    key id, cohort and parameters of a watermarked response, so that detection can
    reproduce it later (never key material). ``features`` are what detection reads of
    the prompt, computed from the message list where the event is built.
    """

    ts: float
    request_id: str
    endpoint: str
    status: int
    latency_ms: float
    account: str | None = None
    key_id: str | None = None
    client_addr: str | None = None
    user_agent: str | None = None
    model: str | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    prompt: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stream: bool = False
    error_type: str | None = None
    error_code: str | None = None
    watermark: dict[str, Any] | None = None
    # Prompt features from the structured request (``detection.features``): counts,
    # flags and hashes, no text, so they are kept when ``retain_prompts`` is off.
    features: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestEvent:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

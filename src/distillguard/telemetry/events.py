"""``RequestEvent``: the one record every request leaves behind, successful or not."""

from __future__ import annotations

import dataclasses
from typing import Any

# Longest client-chosen string an event keeps (user agent, path, model, parameter
# values). Why: events are written for every request, unauthenticated ones included,
# so a 1 MB User-Agent on 50 requests grew events.db by 101.7 MB of 401s.
MAX_STORED_CHARS = 512
_CUT = "...[cut]"


def cap_text(text: str | None, limit: int = MAX_STORED_CHARS) -> str | None:
    """``text`` cut to ``limit`` characters, marked, so a stored field stays bounded."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - len(_CUT)] + _CUT


def _cap_value(value: Any) -> Any:
    if isinstance(value, str):
        return cap_text(value)
    if isinstance(value, list):
        return [_cap_value(v) for v in value[:16]]
    if isinstance(value, dict):
        return {cap_text(str(k), 64): _cap_value(v) for k, v in list(value.items())[:16]}
    return value


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

    Client-chosen strings are cut to ``MAX_STORED_CHARS`` (prompt text aside: it is
    bounded by ``max_body_bytes`` and only read once a key is valid), and the event of a
    request that failed authentication is a bounded summary: no params, prompt or
    features, whatever the request carried.
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

    def __post_init__(self) -> None:
        self.endpoint = cap_text(self.endpoint) or ""
        self.user_agent = cap_text(self.user_agent)
        self.model = cap_text(self.model)
        self.client_addr = cap_text(self.client_addr, 64)
        if self.account is None:
            self.params, self.prompt, self.features = {}, None, None
        elif self.params:
            self.params = _cap_value(self.params)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestEvent:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

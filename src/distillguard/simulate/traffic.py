"""What populations emit and what every run shares: requests, accounts, the answer model.

A ``SimRequest`` is one API call as a client would make it (messages, sampling
parameters, model, client address, user agent) at a simulated time. Replay and live mode
turn the same requests into the same ``RequestEvent`` fields: the prompt text is the
gateway's ``role: text`` lines, ``prompt_tokens``/``completion_tokens`` are the word
counts that ``SimulatedBackend`` (an ``EchoBackend``) answers with, from one answer-length
model (``answer_tokens``) used by both.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import re
import statistics
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

from distillguard.gateway.schema import RECORDED_PARAMS

LABELS = ("benign", "heavy", "attack")
_NORMAL = statistics.NormalDist()
# Asking for reasoning makes a model write more: a simple, stated assumption.
_LONG_ANSWER = re.compile(r"step[- ]by[- ]step|reasoning|chain of thought|in detail|"
                          r"thorough|show your work|explain", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, slots=True)
class SimRequest:
    """One request at simulated time ``ts`` by ``account`` of population ``group``."""

    ts: float
    account: str
    messages: tuple[tuple[str, str], ...]
    params: dict[str, Any]
    model: str
    addr: str
    agent: str
    group: str

    def body(self) -> dict[str, Any]:
        """The chat completion body the client sends."""
        return {"model": self.model,
                "messages": [{"role": r, "content": c} for r, c in self.messages],
                **self.params}

    def recorded_params(self) -> dict[str, Any]:
        """The parameters the gateway records in the event (as ``schema.recorded_params``)."""
        return {k: self.params[k] for k in RECORDED_PARAMS if k in self.params}

    def prompt_text(self) -> str:
        """The prompt as the gateway records it: ``role: text`` lines."""
        return "\n".join(f"{r}: {c}" for r, c in self.messages)

    def last_user(self) -> str:
        for role, content in reversed(self.messages):
            if role == "user":
                return content
        return self.messages[-1][1] if self.messages else ""


@dataclasses.dataclass(frozen=True)
class AccountSpec:
    """A simulated account: its population, ground-truth label and key creation time."""

    name: str
    group: str
    kind: str
    label: str
    key_created_at: float
    campaign: str | None = None


@functools.lru_cache(maxsize=65536)  # prompts repeat (benchmarks, templates, follow-ups)
def answer_tokens(user_text: str, max_tokens: int) -> int:
    """Words the simulated model answers ``user_text`` with, at most ``max_tokens``.

    Deterministic in the text (so replay and live agree): log-normal around 220 words,
    three times longer when the prompt asks for reasoning or detail.
    """
    h = zlib.crc32(" ".join(user_text.split()).encode())
    z = _NORMAL.inv_cdf(((h & 0xFFFF) + 0.5) / 65536.0)
    length = 220.0 * math.exp(0.6 * z)
    if _LONG_ANSWER.search(user_text):
        length *= 3.0
    return max(1, min(int(length), max_tokens))


def answer_text(user_text: str, max_tokens: int) -> str:
    """The simulated answer itself: the echo backend's words, ``answer_tokens`` of them."""
    words = user_text.split() or ["echo"]
    n = answer_tokens(user_text, max_tokens)
    return " ".join(words[k % len(words)] for k in range(n))


# --- helpers for populations -------------------------------------------------------------

# Relative activity by local hour: asleep at night, peaks late morning and evening.
HOURLY = (0.05, 0.03, 0.02, 0.02, 0.02, 0.04, 0.1, 0.25, 0.5, 0.8, 0.95, 1.0, 0.8, 0.85,
          0.95, 0.95, 0.9, 0.75, 0.6, 0.65, 0.7, 0.6, 0.35, 0.15)
BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile",
)
SDKS = ("OpenAI/Python 1.40.0", "OpenAI/Python 1.52.2", "OpenAI/JS 4.56.0",
        "python-requests/2.32.3", "curl/8.5.0", "LiteLLM/1.40")
DEFAULT_MAX_TOKENS = 256


def diurnal_times(rng: random.Random, start: float, end: float, per_day: float,
                  tz_hours: float) -> list[float]:
    """Times in [start, end) of a Poisson process of ``per_day`` events a day whose rate
    follows ``HOURLY`` at the local time ``tz_hours`` from UTC (thinning)."""
    if per_day <= 0:
        return []
    peak = per_day / (sum(HOURLY) / 24.0) / 86400.0
    out, t = [], start
    while True:
        t += rng.expovariate(peak)
        if t >= end:
            return out
        hour = int(((t / 3600.0) + tz_hours) % 24)
        if rng.random() < HOURLY[hour]:
            out.append(t)


def residential_addr(rng: random.Random) -> str:
    """A random public IPv4 address (each one in its own /24, as homes are)."""
    return f"{rng.choice([24, 31, 46, 62, 73, 77, 81, 86, 90, 98, 109, 151, 176, 188, 212])}." \
           f"{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def datacenter_addr(rng: random.Random, prefix: str | None = None) -> str:
    """An address in a cloud /24 (``prefix`` like "34.90.1" or a random one)."""
    prefix = prefix or f"{rng.choice([3, 13, 34, 35, 52, 104, 138, 159])}." \
                       f"{rng.randint(0, 255)}.{rng.randint(0, 255)}"
    return f"{prefix}.{rng.randint(2, 254)}"


TOPICS: dict[str, tuple[str, ...]] = {
    "code": ("code", "python", "function", "javascript", "sql", "error", "api", "react",
             "java", "script", "program", "class", "database", "html", "css", "bug"),
    "writing": ("write", "essay", "story", "poem", "article", "blog", "letter", "rewrite",
                "paragraph", "email", "summar", "title"),
    "business": ("business", "marketing", "company", "customer", "product", "sales",
                 "startup", "brand", "strategy", "market", "price"),
    "science": ("science", "physics", "chemistry", "biology", "energy", "climate",
                "research", "experiment", "quantum", "cell"),
    "math": ("math", "equation", "calculate", "probability", "number", "solve", "proof",
             "integral", "algebra", "statistics"),
    "learning": ("learn", "student", "teach", "course", "school", "university", "lesson",
                 "explain", "study"),
    "life": ("health", "food", "travel", "recipe", "exercise", "family", "relationship",
             "game", "music", "movie"),
}


def topic_of(text: str) -> str:
    """A coarse lexical topic of a prompt (``other`` when no keyword matches)."""
    low = text.lower()
    best, hits = "other", 0
    for name, words in TOPICS.items():
        n = sum(1 for w in words if w in low)
        if n > hits:
            best, hits = name, n
    return best


def by_topic(convs: Sequence[tuple[str, ...]]) -> dict[str, list[tuple[str, ...]]]:
    """Conversations grouped by the topic of their first turn."""
    out: dict[str, list[tuple[str, ...]]] = {}
    for c in convs:
        out.setdefault(topic_of(c[0]), []).append(c)
    return out


def conversation_turns(conv: tuple[str, ...], model_max: int,
                       turns: int) -> Iterator[tuple[tuple[str, str], ...]]:
    """The message lists of a session that asks up to ``turns`` turns of ``conv``: each
    later turn carries the earlier questions and the simulated answers."""
    history: list[tuple[str, str]] = []
    for text in conv[:turns]:
        history.append(("user", text))
        yield tuple(history)
        history.append(("assistant", answer_text(text, model_max)))

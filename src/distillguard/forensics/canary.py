"""Canaries: a second carrier of evidence, independent of the token-level watermark.

The token watermark lives in which (context, token) pairs a text uses, so a scrub that
rewrites the tokens (paraphrasing the harvest, neutralising the bias at inference) can
remove it. A canary lives in what an answer *says*: the gateway opens a served answer
with a short keyed code, ``[amber-falcon-42]``, chosen by an HMAC of the watermark key,
the account's cohort and the prompt. A student that trained on the answer memorises it,
and asked the same prompt (our logs hold the prompts each account sent) it repeats it.

Serving (``marker_for``): for each request the server decides, from server settings and
the key alone, whether this answer carries a canary (``canary_rate`` for every account,
``canary_flagged_rate`` for an account under a ``degrade`` action) and which code. No
request field reaches the choice.

Detection (``canary_test``): ask the suspect the logged prompts; count the prompts whose
answer contains the code our key gives that (cohort, prompt). Under the null (the suspect
does not depend on our key) each prompt's code is an independent uniform draw from the
``CODE_SPACE`` codes, so the chance that answer ``i`` contains it is exactly
``q_i = (distinct codes in answer i) / CODE_SPACE``, whatever the suspect writes; the
count of hits is Poisson-binomial with those ``q_i`` and its upper tail is an exact
p-value. Prompts are deduplicated (the same prompt has the same code).

Limits, stated in reports: the code is visible; a distiller who looks for it can cut it
with a regular expression. It is meant for the scrubs that do not look (clean fine-tuning,
paraphrasing, inference-time neutralisation of the token bias), and it is served to
flagged accounts by default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

ADJECTIVES = (
    "amber", "azure", "brisk", "calm", "candid", "cobalt", "coral", "crimson", "dapper",
    "dusky", "eager", "ember", "fabled", "fallow", "gentle", "gilded", "hazel", "humble",
    "indigo", "ivory", "jade", "jolly", "keen", "lilac", "lively", "lunar", "mellow",
    "misty", "nimble", "noble", "ochre", "olive", "pale", "placid", "quiet", "quick",
    "russet", "rustic", "sable", "scarlet", "silver", "solar", "somber", "tawny", "tidal",
    "topaz", "umber", "upbeat", "velvet", "vivid", "wary", "willow", "wintry", "woven",
    "zesty", "zonal", "arctic", "bold", "cedar", "dusty", "frosty", "golden", "hollow",
    "plucky",
)
NOUNS = (
    "falcon", "otter", "badger", "heron", "lynx", "marten", "osprey", "raven", "salmon",
    "tapir", "walrus", "beacon", "canyon", "delta", "glacier", "harbor", "island", "lagoon",
    "meadow", "prairie", "quarry", "ridge", "summit", "tundra", "valley", "anchor", "banner",
    "candle", "dynamo", "engine", "fiddle", "goblet", "hammer", "kettle", "lantern",
    "mirror", "needle", "paddle", "quill", "ribbon", "saddle", "thimble", "trumpet",
    "violin", "wagon", "zephyr", "acorn", "birch", "clover", "daisy", "fern", "garnet",
    "hyacinth", "juniper", "lotus", "maple", "nettle", "orchid", "pebble", "quartz",
    "spruce", "thistle", "tulip", "yarrow",
)
NUMBERS = range(10, 100)
CODE_SPACE = len(ADJECTIVES) * len(NOUNS) * len(NUMBERS)
"""How many distinct codes there are (368,640): one hit by chance has probability
1/CODE_SPACE per code an answer contains."""

_ADJ = {w: i for i, w in enumerate(ADJECTIVES)}
_NOUN = {w: i for i, w in enumerate(NOUNS)}
# A code as it may come back from a student or a paraphraser: any case, words joined by
# hyphens, spaces or underscores, brackets optional.
_CODE = re.compile(r"(?<![a-z])([a-z]+)[\s_-]+([a-z]+)[\s_-]+(\d{2})(?!\d)", re.IGNORECASE)
_LABEL = b"distillguard/canary/v1\0"


def normalize_prompt(prompt: str) -> str:
    """The prompt as the canary keys it: whitespace collapsed, nothing else changed."""
    return " ".join(prompt.split())


def _digest(secret: bytes, cohort: int, prompt: str) -> bytes:
    msg = _LABEL + b"%d\0" % cohort + normalize_prompt(prompt).encode()
    return hmac.new(secret, msg, hashlib.sha256).digest()


def code_for(secret: bytes, cohort: int, prompt: str) -> str:
    """The code one key id's ``secret`` gives (cohort, prompt): ``adjective-noun-NN``."""
    d = int.from_bytes(_digest(secret, cohort, prompt)[:8], "little")
    adj, rest = d % len(ADJECTIVES), d // len(ADJECTIVES)
    noun, rest = rest % len(NOUNS), rest // len(NOUNS)
    return f"{ADJECTIVES[adj]}-{NOUNS[noun]}-{NUMBERS[rest % len(NUMBERS)]}"


def selected(secret: bytes, cohort: int, prompt: str, rate: float) -> bool:
    """Whether this (cohort, prompt) carries a canary at ``rate`` (keyed, reproducible)."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    u = int.from_bytes(_digest(secret, cohort, prompt)[8:16], "little") / 2.0**64
    return u < rate


def codes_in(text: str) -> set[str]:
    """Every distinct canary code in ``text`` (normalised to ``adjective-noun-NN``)."""
    found = set()
    for m in _CODE.finditer(text):
        adj, noun, num = m.group(1).lower(), m.group(2).lower(), int(m.group(3))
        if adj in _ADJ and noun in _NOUN and num in NUMBERS:
            found.add(f"{adj}-{noun}-{num}")
    return found


def marker_text(code: str) -> str:
    """How a code opens a served answer."""
    return f"[{code}] "


# ----- serving ---------------------------------------------------------------------------


def request_prompt(request: Any) -> str:
    """The text a canary is keyed on: the last user turn of a chat, else the prompt.

    It is what ``forensics.suspects.logged_prompts`` reads back from the event store and
    what a suspect is asked, so serving and detection key the same string.
    """
    from distillguard.gateway.schema import message_text

    if request.messages is None:
        return request.prompt or ""
    users = [m for m in request.messages if m.get("role") == "user"]
    return message_text(users[-1].get("content")) if users else ""


def marker_for(gateway: Any, ctx: Any, request: Any) -> str | None:
    """The canary that opens this request's answers, or None; records it on ``ctx``.

    Needs the watermark service (its active key and the account's cohort); the rate is
    ``canary_flagged_rate`` under a degrade action, else ``canary_rate``.
    """
    service = getattr(gateway, "watermark", None)
    if service is None or getattr(service, "scheme", None) is None:
        return None
    settings = gateway.settings
    rate = (settings.canary_flagged_rate if ctx.action == "degrade"
            else settings.canary_rate)
    if rate <= 0:
        return None
    prompt = request_prompt(request)
    if not prompt.strip():
        return None
    key = service.ring.active
    cohort = key.cohort_of(ctx.account)
    if not selected(key.secret, cohort, prompt, rate):
        return None
    if isinstance(ctx.watermark, dict):
        # The event says truthfully which answers carry one; never the code itself.
        ctx.watermark["canary"] = True
    return marker_text(code_for(key.secret, cohort, prompt))


def mark_completion(result: Any, marker: str | None) -> None:
    """Open every choice of a ``Completion`` with ``marker``."""
    if marker:
        for choice in result.choices:
            choice.text = marker + choice.text


async def mark_stream(stream: AsyncIterator[Any], marker: str) -> AsyncIterator[Any]:
    """The stream with ``marker`` before the first text of each choice."""
    from distillguard.backends.base import StreamDelta

    opened: set[int] = set()
    try:
        async for item in stream:
            if isinstance(item, StreamDelta) and item.index not in opened:
                opened.add(item.index)
                item = StreamDelta(item.index, marker + item.text, item.finish_reason)
            yield item
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


# ----- detection -------------------------------------------------------------------------


@dataclasses.dataclass
class CanaryResult:
    """The canary test over a suspect's answers to logged prompts."""

    test: str
    p_value: float
    prompts: int  # distinct prompts tested
    hits: int  # prompts whose answer holds the keyed code
    expected_hits: float  # under the null: sum of q_i
    codes_seen: int  # distinct codes in all answers (any key)
    key_id: str | None
    cohort: int | None
    keys_tried: int
    per_key: list[dict[str, Any]]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def poisson_binomial_sf(q: Sequence[float], k: int) -> float:
    """P(sum of independent Bernoulli(q_i) >= k), exactly (dynamic programme)."""
    if k <= 0:
        return 1.0
    if k > len(q):
        return 0.0
    dist = [1.0] + [0.0] * len(q)
    for n, qi in enumerate(q, 1):
        for j in range(n, 0, -1):
            dist[j] = dist[j] * (1 - qi) + dist[j - 1] * qi
        dist[0] *= 1 - qi
    return float(min(1.0, max(0.0, sum(dist[k:]))))


def _tested(prompts: Sequence[str], answers: Sequence[Sequence[str]]
            ) -> list[tuple[str, set[str]]]:
    """One entry per distinct prompt: the codes in all its answers together."""
    merged: dict[str, set[str]] = {}
    for prompt, outs in zip(prompts, answers):
        codes = merged.setdefault(normalize_prompt(prompt), set())
        for text in outs:
            codes |= codes_in(text)
    return list(merged.items())


def _one_key(tested: list[tuple[str, set[str]]], secret: bytes, cohort: int
             ) -> tuple[int, list[float]]:
    hits, q = 0, []
    for prompt, codes in tested:
        q.append(min(1.0, len(codes) / CODE_SPACE))
        hits += code_for(secret, cohort, prompt) in codes
    return hits, q


def canary_test(prompts: Sequence[str], answers: Sequence[Sequence[str]], ring: Any, *,
                assigned: Sequence[tuple[str, int]] | None = None) -> CanaryResult:
    """Exact canary test of a suspect's ``answers[i]`` (one or more) to ``prompts[i]``.

    ``assigned``: the (key id, cohort) our logs record for each prompt (supervised: one
    pooled test, nothing searched). Without it every (key id, cohort) of ``ring`` is
    tried and the best is Sidak-corrected.
    """
    from distillguard.watermark.detector import sidak

    if len(prompts) != len(answers):
        raise ValueError("canary_test needs the answers of every prompt")
    seen: set[str] = set()
    for outs in answers:
        for text in outs:
            seen |= codes_in(text)
    notes = [
        f"Canary test: each distinct prompt's answers are searched for the code our key "
        f"gives (cohort, prompt); under the null a prompt's code is a uniform draw from "
        f"{CODE_SPACE} codes, so answer i holds it with probability (codes in it) / "
        f"{CODE_SPACE}; exact Poisson-binomial tail.",
    ]
    if assigned is not None:
        if len(assigned) != len(prompts):
            raise ValueError("canary_test needs one (key id, cohort) per prompt")
        groups: dict[tuple[str, int], tuple[list[str], list[Sequence[str]]]] = {}
        for p, outs, kc in zip(prompts, answers, assigned):
            g = groups.setdefault((kc[0], int(kc[1])), ([], []))
            g[0].append(p)
            g[1].append(outs)
        hits, q, per_key = 0, [], []
        for (key_id, cohort), (ps, outs) in groups.items():
            tested = _tested(ps, outs)
            h, qs = _one_key(tested, ring.get(key_id).secret, cohort)
            hits += h
            q += qs
            per_key.append({"key_id": key_id, "cohort": cohort, "prompts": len(tested),
                            "hits": h, "p_value": poisson_binomial_sf(qs, h)})
        main = max(per_key, key=lambda k: k["prompts"]) if per_key else None
        notes.append("Supervised: each prompt under the key and cohort our logs record "
                     "for it; nothing searched, no correction.")
        return CanaryResult("canary_supervised", poisson_binomial_sf(q, hits), len(q),
                            hits, sum(q), len(seen), main and main["key_id"],
                            main and main["cohort"], 1, per_key, notes)
    tested = _tested(prompts, answers)
    per_key = []
    for key in ring:
        for cohort in range(key.cohorts):
            h, q = _one_key(tested, key.secret, cohort)
            per_key.append({"key_id": key.key_id, "cohort": cohort, "prompts": len(tested),
                            "hits": h, "p_value": poisson_binomial_sf(q, h)})
    if not per_key:
        raise ValueError("no watermark key to test against")
    best = min(per_key, key=lambda k: k["p_value"])
    m = len(per_key)
    notes.append(f"Every (key id, cohort) tried ({m}); the best is Sidak-corrected.")
    return CanaryResult("canary", sidak(best["p_value"], m), len(tested), best["hits"],
                        sum(len(c) for _, c in tested) / CODE_SPACE, len(seen),
                        best["key_id"], best["cohort"], m, per_key, notes)

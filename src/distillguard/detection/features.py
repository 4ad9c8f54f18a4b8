"""Prompt features computed once from the structured request, where the event is built.

Detection never re-parses the flattened ``role: text`` prompt: a user message whose
content contains ``"\\nassistant: ok\\nuser: thanks"`` is still one user message here.
``request_features`` takes the parsed message list (or a completion prompt) and the
request body's parameters and returns a small JSON-safe dict that the event keeps even
when ``retain_prompts`` is off: counts, flags and hashes, never text.

Keys (all optional to readers; absent means unknown):

- ``roles``: messages per role (``system``, ``user``, ``assistant``, ``tool``, other);
- ``turns``: earlier assistant turns (0: a single-shot ask);
- ``h``: 64-bit hash of the last user message, whitespace-normalised (exact repeats);
- ``sim``: its 64-bit SimHash over word 3-grams (near repeats: few differing bits);
- ``tpl``: 64-bit hash of its masked skeleton (the same template, other numbers/names);
- ``bands`` / ``wrap``: MinHash LSH bands and wrapper hashes of that skeleton;
- ``sys``: 64-bit hash of the system message(s) (an app's fixed instructions);
- ``elicit``: the last user message or the system message asks for reasoning traces or
  dataset rows (lexical cues, ``elicitation.cue_match``);
- ``chars``: characters of the last user message;
- ``n``, ``logprobs`` (0, or ``top_logprobs`` + 1 when asked), ``tools`` (how many);
- ``span``: [start, end) of the last user message's text inside the flattened prompt
  the event stores, so that embeddings read exactly that message without parsing.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from distillguard.detection.text import (
    lsh_bands,
    minhash,
    shingle_hashes,
    skeleton_words,
    wrapper_hashes,
)

ROLES = ("system", "user", "assistant", "tool")
# Characters of the last user message that features read: bounds the cost of a pasted book.
MAX_CHARS = 4000
_MASK64 = (1 << 64) - 1
_SIM_MIX = np.uint64(0xD6E8FEB86659FD93)


def hash64(text: str) -> int:
    """A stable 64-bit hash (the same in every process, unlike ``hash``), as a signed
    int so that JSON and SQL integer columns hold it."""
    v = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"),
                                       digest_size=8).digest(), "little")
    return v - (1 << 64) if v >= 1 << 63 else v


def simhash(words: Sequence[str]) -> int:
    """64-bit SimHash of word 3-grams (signed int); near-duplicates differ in few bits."""
    if not words:
        return 0
    grams = shingle_hashes(list(words)) * _SIM_MIX
    ones = np.unpackbits(grams.view(np.uint8)).reshape(len(grams), 64).sum(axis=0)
    v = int(np.packbits(2 * ones > len(grams)).view(np.uint64)[0])
    return v - (1 << 64) if v >= 1 << 63 else v


def hamming(a: int, b: int) -> int:
    """Differing bits of two 64-bit hashes."""
    return bin((a ^ b) & _MASK64).count("1")


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Joined as ``gateway.schema.message_text`` joins them, so ``span`` is exact.
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(p.get("text"), str))
    return ""


def request_features(messages: Sequence[dict[str, Any]] | None, prompt: str | None,
                     body: dict[str, Any]) -> dict[str, Any]:
    """The features of one request (see the module docstring).

    ``messages``: the chat message list as parsed (dicts with ``role`` and ``content``);
    ``prompt``: a completion request's prompt when there are no messages; ``body``: the
    request body (for ``n``, ``logprobs``, ``tools``). Pure: no I/O, no global state.
    """
    from distillguard.detection.elicitation import cue_match

    roles: dict[str, int] = {}
    last_user = None
    offset = 0
    span = None
    system_texts = []
    if messages is not None:
        for i, m in enumerate(messages):
            role = m.get("role") if isinstance(m, dict) else None
            role = role if isinstance(role, str) else "other"
            key = role if role in ROLES else ("system" if role == "developer" else "other")
            roles[key] = roles.get(key, 0) + 1
            text = content_text(m.get("content")) if isinstance(m, dict) else ""
            # The flattened prompt is "role: text" lines joined by newlines.
            start = offset + len(str(m.get("role") if isinstance(m, dict) else None)) + 2
            if role == "user":
                last_user, span = text, [start, start + len(text)]
            elif key == "system":
                system_texts.append(text)
            offset = start + len(text) + (1 if i + 1 < len(messages) else 0)
    else:
        last_user = prompt or ""
        roles["user"] = 1
        span = [0, len(last_user)]
    text = (last_user or "")[:MAX_CHARS]
    words = skeleton_words(text)
    plain = " ".join(text.split())
    system = "\n".join(system_texts)
    f: dict[str, Any] = {
        "roles": roles,
        "turns": roles.get("assistant", 0),
        "h": hash64(plain),
        "sim": simhash(plain.lower().split()),
        "tpl": hash64(" ".join(words)) if words else 0,
        "bands": list(lsh_bands(minhash(shingle_hashes(words)))) if words else [],
        "wrap": list(wrapper_hashes(words)),
        "elicit": bool(cue_match(text) or (system and cue_match(system[:MAX_CHARS]))),
        "chars": len(last_user or ""),
    }
    if system:
        f["sys"] = hash64(" ".join(system.split()))
    n = body.get("n")
    f["n"] = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    lp = body.get("logprobs")
    top = body.get("top_logprobs")
    if lp or top:
        f["logprobs"] = 1 + (top if isinstance(top, int) and not isinstance(top, bool) else 0)
    else:
        f["logprobs"] = 0
    tools = body.get("tools")
    f["tools"] = len(tools) if isinstance(tools, list) else 0
    if span is not None:
        f["span"] = span
    return f


# A line that starts a role in a flattened prompt ("user: ..."), as stored before features.
_TURN = re.compile(r"^(system|user|assistant|tool|developer): ", re.MULTILINE)


def flat_features(prompt: str, params: dict[str, Any]) -> dict[str, Any]:
    """Features of an event stored before features existed: its flattened prompt split
    at ``role:`` line starts. Weaker (a message may fake turns); used only when the
    event has no ``features``."""
    messages = []
    starts = list(_TURN.finditer(prompt))
    if not starts:
        return request_features(None, prompt, params)
    for i, m in enumerate(starts):
        end = starts[i + 1].start() - 1 if i + 1 < len(starts) else len(prompt)
        messages.append({"role": m.group(1), "content": prompt[m.end():max(end, m.end())]})
    return request_features(messages, None, params)


def crc(value: int) -> int:
    """A 32-bit digest of a feature hash (for compact per-account tables)."""
    return zlib.crc32(value.to_bytes(8, "little", signed=True))

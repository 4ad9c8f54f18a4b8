"""Harvest prompt/response pairs through an OpenAI-compatible API, as a distiller would.

One ``openai.AsyncOpenAI`` client per key; workers share a queue of prompts and take
keys in turn. The output is JSONL, one pair per line, appended as each answer arrives,
so an interrupted harvest resumes by skipping prompts already in the file. A key the
server rejects (401/403) is retired and its prompt goes to another key; a rate-limited
or failing request is retried with backoff. Keys are never written anywhere: records
name a key by its index and optional label.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

HARVEST_FIELDS = ("prompt", "response", "model", "key_index", "account", "usage",
                  "finish_reason", "response_id", "ts")


class HarvestError(RuntimeError):
    """The harvest cannot go on (bad input, every key rejected); the message says why."""


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """One API key and an optional label (the account it belongs to, as the user knows it)."""

    secret: str = dataclasses.field(repr=False)
    label: str | None = None


def read_keys_file(path: Path) -> list[KeySpec]:
    """Keys from a file: one per line, ``KEY`` or ``LABEL KEY``; ``#`` starts a comment."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise HarvestError(f"cannot read keys from {path}: {exc}") from None
    keys = []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) == 1:
            keys.append(KeySpec(parts[0]))
        elif len(parts) == 2:
            keys.append(KeySpec(parts[1], parts[0]))
        else:
            raise HarvestError(f"{path}:{number}: expected `KEY` or `LABEL KEY`")
    return keys


def done_prompts(path: Path) -> set[str]:
    """Prompts already answered in ``path``; repairs a last line cut off by a crash."""
    path = Path(path)
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        # The last record was cut mid-write: drop it so that appending stays valid JSONL.
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(cut)
        data = data[:cut]
    done = set()
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("prompt"), str):
            done.add(record["prompt"])
    return done


@dataclasses.dataclass
class HarvestSummary:
    """What one harvest run did."""

    prompts_total: int
    skipped_done: int
    harvested: int = 0
    failed: int = 0
    completion_tokens: int = 0
    keys_retired: list[int] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _KeyState:
    index: int
    spec: KeySpec
    client: Any
    retired: bool = False


def _default_client(base_url: str, timeout: float) -> Callable[[str], Any]:
    import openai

    def make(secret: str) -> Any:
        return openai.AsyncOpenAI(base_url=base_url, api_key=secret, max_retries=0,
                                  timeout=timeout)

    return make


async def harvest(
    prompts: Sequence[str],
    keys: Sequence[KeySpec],
    out: Path,
    *,
    base_url: str = "",
    model: str = "",
    max_tokens: int = 256,
    temperature: float = 0.7,
    concurrency: int = 8,
    system: str | None = None,
    retries: int = 3,
    timeout: float = 120.0,
    client_factory: Callable[[str], Any] | None = None,
    progress: TextIO | None = sys.stderr,
) -> HarvestSummary:
    """Ask every prompt not yet in ``out`` once, spreading prompts over ``keys``.

    ``client_factory(secret)`` builds an ``openai.AsyncOpenAI`` (tests pass one bound
    to an in-process gateway); by default one is built for ``base_url``. Prompts that
    still fail after ``retries`` are counted in ``failed`` and left for the next run.
    Raises ``HarvestError`` when every key has been rejected.
    """
    import openai

    if not keys:
        raise HarvestError("no API key given (--key or --keys-file)")
    if concurrency < 1:
        raise HarvestError("concurrency must be at least 1")
    factory = client_factory or _default_client(base_url, timeout)
    states = [_KeyState(i, k, factory(k.secret)) for i, k in enumerate(keys)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_prompts(out)
    todo: list[str] = []
    seen: set[str] = set()
    for p in prompts:
        if p not in done and p not in seen:
            seen.add(p)
            todo.append(p)
    summary = HarvestSummary(prompts_total=len(set(prompts)),
                             skipped_done=len(set(prompts) & done))
    if not todo:
        return summary
    if not model:
        model = await _first_model(states)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in todo:
        queue.put_nowait(p)
    bar = _progress(len(todo), progress)
    started = time.monotonic()
    turn = 0

    def next_key() -> _KeyState | None:
        nonlocal turn
        live = [s for s in states if not s.retired]
        if not live:
            return None
        turn += 1
        return live[turn % len(live)]

    with open(out, "a", encoding="utf-8") as sink:
        async def ask(prompt: str) -> None:
            messages = ([{"role": "system", "content": system}] if system else [])
            messages.append({"role": "user", "content": prompt})
            attempt = 0
            while True:
                state = next_key()
                if state is None:
                    summary.failed += 1
                    return
                try:
                    resp = await state.client.chat.completions.create(
                        model=model, messages=messages, max_tokens=max_tokens,
                        temperature=temperature)
                except (openai.AuthenticationError, openai.PermissionDeniedError):
                    if not state.retired:
                        state.retired = True
                        summary.keys_retired.append(state.index)
                        print(f"harvest: key #{state.index} was rejected; retiring it",
                              file=progress or sys.stderr, flush=True)
                    continue  # another key takes the prompt; no attempt is used up
                except (openai.RateLimitError, openai.APIConnectionError,
                        openai.InternalServerError, openai.APITimeoutError):
                    attempt += 1
                    if attempt > retries:
                        summary.failed += 1
                        return
                    await asyncio.sleep(min(8.0, 0.25 * 2 ** attempt) * random.uniform(0.5, 1))
                    continue
                except openai.APIStatusError as exc:
                    # Other 4xx: the request itself is bad; retrying will not help.
                    print(f"harvest: a prompt was refused ({exc.status_code})",
                          file=progress or sys.stderr, flush=True)
                    summary.failed += 1
                    return
                choice = resp.choices[0]
                usage = resp.usage.model_dump() if resp.usage is not None else None
                record = {
                    "prompt": prompt, "response": choice.message.content or "",
                    "model": resp.model, "key_index": state.index,
                    "account": state.spec.label, "usage": usage,
                    "finish_reason": choice.finish_reason, "response_id": resp.id,
                    "ts": round(time.time(), 3),
                }
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                sink.flush()
                summary.harvested += 1
                summary.completion_tokens += (usage or {}).get("completion_tokens") or 0
                return

        async def worker() -> None:
            while True:
                try:
                    prompt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await ask(prompt)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(failed=summary.failed, retired=len(summary.keys_retired),
                                    refresh=False)

        try:
            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(todo)))))
        finally:
            if bar is not None:
                bar.close()
            for s in states:
                close = getattr(s.client, "close", None)
                if close is not None:
                    await close()
    summary.seconds = round(time.monotonic() - started, 2)
    if all(s.retired for s in states):
        raise HarvestError(f"every key was rejected by the server; {summary.harvested} "
                           f"pairs written to {out} before that")
    return summary


async def _first_model(states: list[_KeyState]) -> str:
    import openai

    for s in states:
        try:
            page = await s.client.models.list()
        except (openai.AuthenticationError, openai.PermissionDeniedError):
            continue
        except openai.APIError as exc:
            raise HarvestError(f"cannot list the server's models: {exc}") from None
        if page.data:
            return page.data[0].id
    raise HarvestError("no key could list the server's models; pass --model")


def _progress(total: int, stream: TextIO | None) -> Any:
    if stream is None:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="harvest", unit="prompt", file=stream, dynamic_ncols=True)

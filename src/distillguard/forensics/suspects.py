"""What can be put to a test: an HTTP endpoint, local weights, or a text corpus.

A suspect that answers prompts (``EndpointSuspect``, ``WeightsSuspect``) gives
``generate``; local weights also give ``predictions`` (argmax next tokens, for the
reading mode); a corpus only has texts. Prompts for the black-box test come best from
our own event store: the prompts the harvesting accounts sent (``prompts_from_store``).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

_ROLE_LINE = re.compile(r"^(system|user|assistant|developer|tool): ", re.MULTILINE)


class SuspectError(ValueError):
    """A suspect cannot be reached or read; the message says what and why."""


def user_turns(prompt_text: str) -> list[str]:
    """The user messages of a prompt as the gateway records it (``role: text`` lines).

    A completion-style prompt (no role lines) is returned whole.
    """
    marks = list(_ROLE_LINE.finditer(prompt_text))
    if not marks or marks[0].start() != 0:
        return [prompt_text] if prompt_text.strip() else []
    turns = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() - 1 if i + 1 < len(marks) else len(prompt_text)
        if m.group(1) == "user":
            turns.append(prompt_text[m.end():end])
    return turns


def logged_prompts(settings: Any, accounts: Sequence[str], *,
                   watermarked_only: bool = True) -> dict[str, dict[str, Any] | None]:
    """Distinct last user turns of the accounts' successful requests, oldest first, each
    with the watermark record (scheme, key id, cohort, parameters) of its first answer.

    These are the prompts whose answers the accounts harvested; querying a suspect with
    them is the "supervised" setting of Sander et al., the most powerful black-box test.
    """
    from distillguard.telemetry.store import open_store

    store = open_store(settings)
    seen: dict[str, dict[str, Any] | None] = {}
    try:
        for account in accounts:
            for event in store.iter_events(account=account):
                if event.status != 200 or not event.prompt:
                    continue
                if watermarked_only and not event.watermark:
                    continue
                turns = user_turns(event.prompt)
                if turns:
                    seen.setdefault(turns[-1], event.watermark)
    finally:
        store.close()
    return seen


def prompts_from_store(settings: Any, accounts: Sequence[str], *,
                       watermarked_only: bool = True) -> list[str]:
    """The prompts of ``logged_prompts``, without their watermark records."""
    return list(logged_prompts(settings, accounts, watermarked_only=watermarked_only))


def read_texts(paths: Iterable[str | Path], *, field: str | None = None) -> list[str]:
    """Texts from files: JSONL (``text``, else ``response``, or ``field``) or plain text.

    ``-`` reads standard input. A plain-text file is one document.
    """
    texts = []
    for raw in paths:
        try:
            data = sys.stdin.read() if str(raw) == "-" else Path(raw).read_text(
                encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SuspectError(f"cannot read {raw}: {exc}") from None
        stripped = data.lstrip()
        if stripped.startswith("{"):
            for number, line in enumerate(data.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    raise SuspectError(f"{raw}:{number}: not valid JSON") from None
                names = [field] if field else ["text", "response"]
                value = next((rec.get(n) for n in names if isinstance(rec.get(n), str)), None)
                if value is None:
                    raise SuspectError(f"{raw}:{number}: no text field "
                                       f"({' or '.join(names)})")
                texts.append(value)
        elif data.strip():
            texts.append(data)
    return texts


class EndpointSuspect:
    """A model behind an OpenAI-compatible API, queried with the official SDK."""

    kind = "endpoint"

    def __init__(self, base_url: str, api_key: str, model: str, *, concurrency: int = 8,
                 timeout: float = 120.0, client: Any = None) -> None:
        self.base_url = base_url
        self.model = model
        self.concurrency = concurrency
        self._api_key = api_key
        self._timeout = timeout
        self._client = client

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "base_url": self.base_url, "model": self.model}

    def generate(self, prompts: Sequence[str], *, samples: int = 1, max_tokens: int = 128,
                 temperature: float = 0.7, seed: int = 0,
                 progress: TextIO | None = sys.stderr) -> list[str]:
        """``samples`` answers per prompt (prompt-major order)."""
        return asyncio.run(self._generate(prompts, samples, max_tokens, temperature,
                                          progress))

    async def _generate(self, prompts: Sequence[str], samples: int, max_tokens: int,
                        temperature: float, progress: TextIO | None) -> list[str]:
        import openai

        client = self._client or openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self._api_key or "none", max_retries=2,
            timeout=self._timeout)
        sem = asyncio.Semaphore(self.concurrency)
        bar = _bar(len(prompts) * samples, "query", progress)

        async def one(prompt: str) -> str:
            async with sem:
                try:
                    resp = await client.chat.completions.create(
                        model=self.model, max_tokens=max_tokens, temperature=temperature,
                        messages=[{"role": "user", "content": prompt}])
                except openai.APIError as exc:
                    raise SuspectError(f"the suspect endpoint failed: {exc}") from None
                if bar is not None:
                    bar.update(1)
                return resp.choices[0].message.content or ""

        try:
            return list(await asyncio.gather(*(one(p) for p in prompts
                                               for _ in range(samples))))
        finally:
            if bar is not None:
                bar.close()
            if self._client is None:
                await client.close()


class WeightsSuspect:
    """A causal LM folder (transformers) on this machine: generation and predictions.

    A folder holding a distiller's ``neutralise.json`` (``distill neutralise``) is
    decoded through it, in ``generate`` and ``predictions`` alike, the way the
    distiller's own server would serve it; ``neutralise=False`` reads the raw weights.
    """

    kind = "weights"

    def __init__(self, path: str | Path, *, device: str = "cpu", batch_size: int = 16,
                 model: Any = None, tokenizer: Any = None, neutralise: bool = True) -> None:
        from distillguard.distill.scrub import Neutraliser
        from distillguard.distill.train import TrainError

        self.path = str(path)
        self.device = device
        self.batch_size = batch_size
        self._model = model
        self._tokenizer = tokenizer
        try:
            self.neutraliser = Neutraliser.load(Path(path)) if neutralise else None
        except TrainError as exc:
            raise SuspectError(str(exc)) from None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "path": self.path}
        if self.neutraliser is not None:
            out["neutraliser_pairs"] = self.neutraliser.size
        return out

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            if not (Path(self.path) / "config.json").is_file():
                # A missing folder must not turn into a model-hub download.
                raise SuspectError(f"no model folder at {self.path} (config.json missing)")
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.path)
                self._model = AutoModelForCausalLM.from_pretrained(
                    self.path, dtype=torch.float32).to(self.device)
            except (OSError, ValueError) as exc:
                raise SuspectError(f"cannot load a model from {self.path}: {exc}") from None
            self._model.eval()
        return self._model, self._tokenizer

    @property
    def tokenizer(self) -> Any:
        return self._load()[1]

    def generate(self, prompts: Sequence[str], *, samples: int = 1, max_tokens: int = 128,
                 temperature: float = 0.7, seed: int = 0,
                 progress: TextIO | None = sys.stderr, neutraliser: Any = None) -> list[str]:
        """``samples`` sampled answers per prompt (prompt-major order), batched.

        ``neutraliser``: a logits processor to decode through instead of the folder's.
        """
        import torch
        from transformers import LogitsProcessorList

        from distillguard.distill.train import prompt_token_ids

        model, tok = self._load()
        processor = neutraliser if neutraliser is not None else self.neutraliser
        processors = LogitsProcessorList([processor] if processor is not None else [])
        rows = [prompt_token_ids(tok, p) for p in prompts for _ in range(samples)]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out: list[str] = []
        bar = _bar(len(rows), "generate", progress)
        gen = torch.Generator().manual_seed(seed)
        try:
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start:start + self.batch_size]
                width = max(len(r) for r in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for i, r in enumerate(batch):  # left padding: every row ends together
                    ids[i, width - len(r):] = torch.tensor(r)
                    mask[i, width - len(r):] = 1
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                with torch.no_grad():
                    seqs = model.generate(
                        input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                        max_new_tokens=max_tokens, do_sample=temperature > 0,
                        temperature=temperature if temperature > 0 else None, top_p=None,
                        top_k=None, pad_token_id=pad, logits_processor=processors)
                for row in seqs[:, width:].tolist():
                    if tok.eos_token_id in row:
                        row = row[: row.index(tok.eos_token_id)]
                    out.append(tok.decode(row, skip_special_tokens=True))
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        return out

    def predictions(self, texts: Sequence[Sequence[int]], *,
                    progress: TextIO | None = sys.stderr) -> list[list[int]]:
        """Argmax next-token ids at every position of every token-id text."""
        import torch

        model, _ = self._load()
        out: list[list[int]] = []
        bar = _bar(len(texts), "read", progress)
        try:
            for start in range(0, len(texts), self.batch_size):
                batch = [list(t) for t in texts[start:start + self.batch_size]]
                width = max((len(t) for t in batch), default=0)
                if width == 0:
                    out.extend([] for _ in batch)
                    continue
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for i, t in enumerate(batch):
                    ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
                    mask[i, : len(t)] = 1
                with torch.no_grad():
                    logits = model(input_ids=ids.to(self.device),
                                   attention_mask=mask.to(self.device)).logits
                if self.neutraliser is not None:
                    for i, t in enumerate(batch):
                        self.neutraliser.adjust(t, logits[i, : len(t)])
                best = logits.argmax(-1).cpu().tolist()
                out.extend(best[i][: len(t)] for i, t in enumerate(batch))
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        return out


def _bar(total: int, desc: str, stream: TextIO | None) -> Any:
    if stream is None or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=stream, dynamic_ncols=True)

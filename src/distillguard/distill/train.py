"""Train a student causal LM on harvested prompt/response pairs.

Default student: a copy of the embedded model (the teacher itself, before any
watermark), fine-tuned. Why: an attacker distils into a pretrained model, not into
random weights; at CPU scale a fresh model learns little beyond bigram statistics in
minutes, while a fine-tuned copy learns what the harvested outputs add to what it
already knows -- which for watermarked outputs is the watermark. ``--student fresh``
trains a small new model with the teacher's tokenizer instead; ``--student PATH``
fine-tunes any transformers causal LM folder.

``--size`` scales the work. For a fine-tuned student it sets how many top transformer
blocks train (the rest, the embeddings and the tied output layer stay frozen); for a
fresh one its architecture. When only the top blocks train, the frozen lower blocks'
outputs are computed once per sequence and reused every epoch, which makes an epoch
cost about one forward pass on a CPU. ``--size full`` trains everything, for a GPU.

Loss counts response tokens only (and the end-of-turn token), as in supervised
fine-tuning. A held-out share of the pairs gives the student's loss on teacher outputs
it never saw, before and after training: what the attacker got for the harvest.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

SIZES: dict[str, dict[str, int]] = {
    # top blocks trained when fine-tuning; architecture of a fresh student
    "xs": {"train_layers": 1, "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2},
    "s": {"train_layers": 2, "layers": 4, "hidden": 192, "heads": 6, "kv_heads": 2},
    "m": {"train_layers": 8, "layers": 8, "hidden": 384, "heads": 6, "kv_heads": 2},
    "full": {"train_layers": 0, "layers": 30, "hidden": 576, "heads": 9, "kv_heads": 3},
}
"""Named sizes: ``train_layers`` 0 means every block (and the embeddings) train."""

CHECKPOINT_PREFIX = "checkpoint-"


class TrainError(ValueError):
    """Bad training input (no pairs, unreadable file, unknown size); says which."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """One harvested exchange."""

    prompt: str
    response: str


def read_pairs(paths: Sequence[Path]) -> list[Pair]:
    """Pairs from harvest JSONL files (``prompt`` and ``response`` fields)."""
    pairs = []
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise TrainError(f"cannot read pairs from {path}: {exc}") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                prompt, response = rec["prompt"], rec["response"]
            except (ValueError, KeyError, TypeError):
                raise TrainError(f"{path}:{number}: expected JSON with `prompt` and "
                                 "`response`") from None
            if isinstance(prompt, str) and isinstance(response, str) and response.strip():
                pairs.append(Pair(prompt, response))
    if not pairs:
        raise TrainError("no prompt/response pairs to train on")
    return pairs


@dataclasses.dataclass
class Example:
    """Token ids of one pair and where the response starts."""

    ids: list[int]
    response_start: int


def encode_pairs(tokenizer: Any, pairs: Sequence[Pair], *, max_prompt_tokens: int = 256,
                 max_response_tokens: int = 256) -> list[Example]:
    """Chat-template the prompt, append the response and the end-of-turn token."""
    out = []
    eos = tokenizer.eos_token_id
    for pair in pairs:
        prompt_ids = prompt_token_ids(tokenizer, pair.prompt)[-max_prompt_tokens:]
        resp = tokenizer(pair.response, add_special_tokens=False)["input_ids"]
        resp = list(resp[:max_response_tokens])
        if len(resp) < max_response_tokens and eos is not None:
            resp.append(eos)
        out.append(Example(list(prompt_ids) + resp, len(prompt_ids)))
    return out


def prompt_token_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The ids a chat model sees before it answers ``prompt`` (generation prompt added)."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                        add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError("--device cuda asked, but torch sees no CUDA device")
    return device


def load_student(student: str, size: str, *, cache_dir: Path | None = None,
                 seed: int = 0) -> tuple[Any, Any, int]:
    """(model, tokenizer, frozen_layers) for ``student`` at ``size``.

    ``student``: ``embedded`` (a copy of the embedded model), ``fresh`` (new weights
    with the embedded model's tokenizer) or a model folder.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from distillguard.backends.model_cache import ensure_converted

    if size not in SIZES:
        raise TrainError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    spec = SIZES[size]
    if student == "fresh":
        source = ensure_converted(cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        head_dim = spec["hidden"] // spec["heads"]
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=spec["hidden"],
            intermediate_size=spec["hidden"] * 8 // 3, num_hidden_layers=spec["layers"],
            num_attention_heads=spec["heads"], num_key_value_heads=spec["kv_heads"],
            head_dim=head_dim, max_position_embeddings=2048,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        return model, tokenizer, 0
    path = ensure_converted(cache_dir) if student == "embedded" else Path(student)
    if not (path / "config.json").is_file():
        # Never let transformers read a missing folder as a hub id and go online.
        raise TrainError(f"no model folder at {path} (want `embedded`, `fresh` or a "
                         "folder with config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise TrainError(f"cannot load a student from {path}: {exc}") from None
    layers = model.config.num_hidden_layers
    train_layers = spec["train_layers"]
    frozen = 0 if train_layers in (0,) or train_layers >= layers else layers - train_layers
    return model, tokenizer, frozen


def freeze_below(model: Any, frozen: int) -> list[Any]:
    """Freeze embeddings, output layer and the first ``frozen`` blocks; return trainables."""
    if frozen == 0:
        params = [p for p in model.parameters()]
        for p in params:
            p.requires_grad_(True)
        return params
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = []
    for block in model.model.layers[frozen:]:
        for p in block.parameters():
            p.requires_grad_(True)
            trainable.append(p)
    for p in model.model.norm.parameters():
        p.requires_grad_(True)
        trainable.append(p)
    return trainable


class StudentRunner:
    """Forward passes of a student whose first ``frozen`` blocks never change.

    ``hidden(batch)`` returns the final hidden states. With ``frozen`` > 0 the input of
    block ``frozen`` is computed once per example and cached, and only the top blocks
    run again; the result equals the full model's (tested).
    """

    def __init__(self, model: Any, frozen: int, device: str,
                 cache: dict[Any, Any] | None = None) -> None:
        self.model = model
        self.frozen = frozen
        self.device = device
        # Keyed by (frozen, token ids): students of one base share it (bench/radioactivity).
        self._cache: dict[Any, Any] = {} if cache is None else cache

    def _prefix(self, examples: Sequence[Example]) -> list[Any]:
        import torch

        keys = [(self.frozen, tuple(e.ids)) for e in examples]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            ids, mask = _pad([examples[i].ids for i in missing], self.device)
            inner = self.model.model
            layers = inner.layers
            captured: list[Any] = []

            def keep(_module: Any, _inputs: Any, output: Any) -> None:
                captured.append(output[0] if isinstance(output, tuple) else output)

            # Run only the frozen blocks and catch the last one's output (before the
            # final norm, which belongs to the trained part).
            handle = layers[self.frozen - 1].register_forward_hook(keep)
            inner.layers = type(layers)(list(layers)[: self.frozen])
            try:
                with torch.no_grad():
                    inner(input_ids=ids, attention_mask=mask, use_cache=False)
            finally:
                inner.layers = layers
                handle.remove()
            states = captured[-1]
            for row, i in enumerate(missing):
                n = len(examples[i].ids)
                self._cache[keys[i]] = states[row, :n].detach().to("cpu")
        return [self._cache[k] for k in keys]

    def hidden(self, examples: Sequence[Example]) -> Any:
        import torch

        if self.frozen == 0:
            ids, mask = _pad([e.ids for e in examples], self.device)
            return self.model.model(input_ids=ids, attention_mask=mask,
                                    use_cache=False).last_hidden_state
        prefix = self._prefix(examples)
        width = max(len(p) for p in prefix)
        dim = prefix[0].shape[-1]
        h = torch.zeros(len(prefix), width, dim, dtype=prefix[0].dtype)
        mask = torch.zeros(len(prefix), width, dtype=torch.long)
        for row, p in enumerate(prefix):
            h[row, : len(p)] = p
            mask[row, : len(p)] = 1
        inner = self.model.model
        layers = inner.layers
        # Run only the top blocks: the lower ones' output goes in as the embeddings.
        inner.layers = type(layers)(list(layers)[self.frozen:])
        try:
            return inner(inputs_embeds=h.to(self.device), attention_mask=mask.to(self.device),
                         use_cache=False).last_hidden_state
        finally:
            inner.layers = layers

    def loss(self, examples: Sequence[Example]) -> tuple[Any, int]:
        """Mean cross-entropy over response tokens, and how many there were."""
        import torch

        h = self.hidden(examples)
        rows, cols, targets = [], [], []
        for r, e in enumerate(examples):
            for pos in range(max(e.response_start, 1), len(e.ids)):
                rows.append(r)
                cols.append(pos - 1)
                targets.append(e.ids[pos])
        if not targets:
            return h.sum() * 0.0, 0
        sel = h[torch.tensor(rows), torch.tensor(cols)]
        # The output layer only runs where a loss is taken: prompts cost no vocabulary
        # projection.
        logits = self.model.lm_head(sel).float()
        loss = torch.nn.functional.cross_entropy(
            logits, torch.tensor(targets, device=logits.device))
        return loss, len(targets)


def _pad(seqs: Sequence[Sequence[int]], device: str) -> tuple[Any, Any]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device)


@dataclasses.dataclass
class TrainResult:
    """What a training run produced; ``heldout_loss_*`` are nats per response token."""

    out_dir: str
    student: str
    size: str
    device: str
    examples_train: int
    examples_heldout: int
    response_tokens_per_epoch: int
    epochs: float
    steps: int
    train_loss_first: float | None
    train_loss_last: float | None
    train_loss_after: float | None  # the whole training set, after training
    heldout_loss_before: float | None
    heldout_loss_after: float | None
    seconds: float
    checkpoints: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def evaluate(runner: StudentRunner, examples: Sequence[Example],
             batch_size: int) -> float | None:
    """Mean loss per response token over ``examples`` (no gradients)."""
    import torch

    if not examples:
        return None
    total, count = 0.0, 0
    runner.model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            loss, n = runner.loss(examples[i:i + batch_size])
            total += float(loss) * n
            count += n
    return total / count if count else None


def train_student(
    pairs: Sequence[Pair],
    out_dir: Path,
    *,
    student: str = "embedded",
    size: str = "s",
    device: str = "auto",
    epochs: float = 3.0,
    batch_size: int = 8,
    lr: float | None = None,
    heldout: float = 0.1,
    max_prompt_tokens: int = 256,
    max_response_tokens: int = 256,
    seed: int = 0,
    save_every: int = 0,
    keep_checkpoints: int = 2,
    resume: bool = False,
    cache_dir: Path | None = None,
    heldout_pairs: Sequence[Pair] | None = None,
    prefix_cache: dict[Any, Any] | None = None,
    eval_train: bool = True,
    progress: TextIO | None = sys.stderr,
) -> TrainResult:
    """Train a student on ``pairs`` and save it (transformers folder) in ``out_dir``.

    ``heldout`` of the pairs (at least one when there are 10 or more) are kept out of
    training unless ``heldout_pairs`` are given. Checkpoints of the trainable weights and
    optimizer go to ``out_dir/checkpoint-STEP.pt`` every ``save_every`` steps (0: once per
    epoch); ``resume`` continues from the newest one. ``prefix_cache``: a dict shared by
    students of the same base model, so frozen-block outputs are computed once for all.
    ``eval_train``: also measure the loss on the whole training set after training
    (``train_loss_after``; one forward pass over it).
    """
    import torch

    if not pairs:
        raise TrainError("no pairs to train on")
    if epochs <= 0 or batch_size < 1:
        raise TrainError("epochs and batch size must be positive")
    started = time.monotonic()
    device = resolve_device(device)
    torch.manual_seed(seed)
    model, tokenizer, frozen = load_student(student, size, cache_dir=cache_dir, seed=seed)
    model.to(device)
    pairs = list(pairs)
    if heldout_pairs is None:
        rng = random.Random(seed)
        order = list(range(len(pairs)))
        rng.shuffle(order)
        n_held = int(round(len(pairs) * heldout)) if len(pairs) >= 10 else 0
        held_idx = set(order[:n_held])
        heldout_pairs = [pairs[i] for i in sorted(held_idx)]
        pairs = [p for i, p in enumerate(pairs) if i not in held_idx]
    enc = dict(max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens)
    train_ex = encode_pairs(tokenizer, pairs, **enc)
    held_ex = encode_pairs(tokenizer, heldout_pairs, **enc)
    params = freeze_below(model, frozen)
    runner = StudentRunner(model, frozen, device, prefix_cache)
    lr = lr if lr is not None else (1e-3 if student == "fresh" else 5e-5 if frozen == 0
                                    else 2e-4)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(train_ex) / batch_size)
    total_steps = max(1, int(round(epochs * steps_per_epoch)))
    warmup = max(1, total_steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup)
        * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    step = 0
    if resume:
        step = _load_checkpoint(out_dir, model, optimizer, scheduler, params)
    held_before = evaluate(runner, held_ex, batch_size)
    save_every = save_every or steps_per_epoch
    bar = None
    if progress is not None:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=step, desc="train", unit="step",
                   file=progress, dynamic_ncols=True)
    first_loss = last_loss = None
    checkpoints: list[str] = []
    model.train()
    try:
        while step < total_steps:
            epoch = step // steps_per_epoch
            order = list(range(len(train_ex)))
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
            start = (step % steps_per_epoch) * batch_size
            for i in range(start, len(order), batch_size):
                if step >= total_steps:
                    break
                idx = order[i:i + batch_size]
                loss, _ = runner.loss([train_ex[j] for j in idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                value = float(loss.detach())
                first_loss = value if first_loss is None else first_loss
                last_loss = value
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.3f}", refresh=False)
                if step % save_every == 0 or step == total_steps:
                    checkpoints.append(str(_save_checkpoint(
                        out_dir, step, model, optimizer, scheduler, params, keep_checkpoints)))
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    held_after = evaluate(runner, held_ex, batch_size)
    # How far the student fitted what it trained on: a distiller trains to convergence.
    train_after = evaluate(runner, train_ex, batch_size) if eval_train else None
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    result = TrainResult(
        out_dir=str(out_dir), student=student, size=size, device=device,
        examples_train=len(train_ex), examples_heldout=len(held_ex),
        response_tokens_per_epoch=sum(len(e.ids) - e.response_start for e in train_ex),
        epochs=epochs, steps=step, train_loss_first=first_loss, train_loss_last=last_loss,
        train_loss_after=train_after,
        heldout_loss_before=held_before, heldout_loss_after=held_after,
        seconds=round(time.monotonic() - started, 1), checkpoints=checkpoints)
    (out_dir / "distill_train.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    return result


def _checkpoint_files(out_dir: Path) -> list[Path]:
    files = [p for p in out_dir.glob(f"{CHECKPOINT_PREFIX}*.pt")
             if p.stem[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(files, key=lambda p: int(p.stem[len(CHECKPOINT_PREFIX):]))


def _save_checkpoint(out_dir: Path, step: int, model: Any, optimizer: Any, scheduler: Any,
                     params: list[Any], keep: int) -> Path:
    import torch

    names = {id(p): n for n, p in model.named_parameters()}
    state = {"step": step, "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(),
             "params": {names[id(p)]: p.detach().to("cpu") for p in params}}
    path = out_dir / f"{CHECKPOINT_PREFIX}{step}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    for old in _checkpoint_files(out_dir)[:-max(keep, 1)]:
        old.unlink(missing_ok=True)
    return path


def _load_checkpoint(out_dir: Path, model: Any, optimizer: Any, scheduler: Any,
                     params: list[Any]) -> int:
    import torch

    files = _checkpoint_files(out_dir)
    if not files:
        return 0
    state = torch.load(files[-1], map_location="cpu", weights_only=True)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["params"].items():
            named[name].copy_(value.to(named[name].device))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])

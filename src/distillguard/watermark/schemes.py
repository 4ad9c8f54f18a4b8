"""Watermark schemes behind one interface, in one registry by name.

A scheme says three things, all on top of ``keyed.KeyedPartition``:

* how to pick a token at generation time (``sampler`` gives a ``RowSampler``; the vLLM
  adapter uses ``process_logits``),
* what each scored (context, token) pair contributes (``token_scores``), and
* the exact null distribution of the summed contributions (``p_values``), valid when
  the text does not depend on the key and repeated (context, token) pairs are scored
  once.

Schemes register themselves in ``registry.SCHEMES`` with ``register``;
``get_scheme(name, **params)`` builds one. ``params`` holds everything needed to
reproduce embedding and detection and is what request events record.
"""

from __future__ import annotations

import abc
import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from scipy import special

from distillguard.registry import RegistryError
from distillguard.watermark.base import ACTIVE_TOP_PROBABILITY, RowSampler, new_tally
from distillguard.watermark.keyed import SEEDINGS, KeyedPartition, threshold, to_unit
from distillguard.watermark.registry import SCHEMES

if TYPE_CHECKING:
    # Only generation touches tensors; detection (scores and p-values) runs without torch,
    # so a lean install can detect. Generation paths import it where they use it.
    import torch

MIN_TEMPERATURE = 0.7
MIN_TOP_P = 0.9
FREE_BITS = 10.0
"""The exponential scheme's free prefix: surprisal (bits) a sampled row draws unkeyed."""


def register(cls: type[Scheme]) -> type[Scheme]:
    """Class decorator: make a scheme available under ``cls.name``."""
    return SCHEMES.register(cls.name, cls)


def get_scheme(name: str, **params: Any) -> Scheme:
    """Build the registered scheme ``name`` with ``params`` (others take defaults)."""
    try:
        cls = SCHEMES.get(name)
    except RegistryError as exc:
        raise ValueError(str(exc)) from None
    return cls(**params)


def _float64_copy(logits: torch.Tensor) -> np.ndarray:
    # numpy's conversion is single-threaded; torch's .to(float64) fans out to its
    # intra-op threads and cost ~2 ms per row on a busy 2-core machine.
    return logits.detach().cpu().numpy().astype(np.float64)


def sample_plain(logits: torch.Tensor, greedy: bool, generator: torch.Generator | None, *,
                 green: np.ndarray | None = None, delta: float = 0.0) -> int:
    """Argmax when ``greedy``, else one draw from softmax(logits) using ``generator``.

    With ``green``, ``delta`` is added to those logits first.
    """
    x = _float64_copy(logits)
    if green is not None:
        # a multiply-add is ~6x faster than np.add(..., where=green) here
        np.add(x, green * delta, out=x)
    return draw(x, greedy, generator)[0]


def draw(x: np.ndarray, greedy: bool, generator: torch.Generator | None) -> tuple[int, float]:
    """(token, probability of the most likely token) for float64 logits ``x`` (reused).

    The draw is an inverse-CDF lookup of one uniform from the row's generator, done in
    numpy: exact, reproducible per seed, and single-threaded, where ``torch.multinomial``
    over 49,152 logits cost 2-35 ms per row on a busy 2-core machine against about
    0.1-0.2 ms for this. Greedy picks report probability 1.
    """
    if greedy:
        return int(np.argmax(x)), 1.0
    x -= x.max()
    np.exp(x, out=x)  # -inf (outside top-p) becomes exactly 0
    import torch

    token, total = _inverse_cdf(x, float(torch.rand(1, generator=generator)))
    return token, 1.0 / total


def draw_with_surprisal(logits: torch.Tensor,
                        generator: torch.Generator | None) -> tuple[int, float, float]:
    """(token, top probability, -log2 p(token)): one plain draw from softmax(logits)."""
    x = _float64_copy(logits)
    token, top = draw(x, False, generator)
    # ``draw`` left the unnormalised weights in x (the largest is 1) and top = 1 / total.
    return token, top, -math.log2(float(x[token]) * top)


_BLOCK = 256


def _inverse_cdf(weights: np.ndarray, u: float) -> tuple[int, float]:
    """(i, total): cumsum(weights)[i-1] <= u * total < cumsum(weights)[i].

    Two levels (block sums, then one block) because a full cumsum is sequential and
    costs more than everything else in a sampling step.
    """
    starts = np.arange(0, len(weights), _BLOCK)
    outer = np.cumsum(np.add.reduceat(weights, starts))
    target = u * outer[-1]
    block = min(int(np.searchsorted(outer, target, side="right")), len(starts) - 1)
    base = outer[block - 1] if block else 0.0
    inner = np.cumsum(weights[starts[block]:starts[block] + _BLOCK])
    i = starts[block] + min(int(np.searchsorted(inner, target - base, side="right")),
                            len(inner) - 1)
    if weights[i] > 0:
        return int(i), float(outer[-1])
    # Rounding put the target on a zero-weight token (e.g. outside top-p): fall back to
    # the exact one-level search.
    full = np.cumsum(weights)
    i = min(int(np.searchsorted(full, u * full[-1], side="right")), len(weights) - 1)
    return int(i if weights[i] > 0 else np.flatnonzero(weights)[-1]), float(outer[-1])


class Scheme(abc.ABC):
    """One watermarking scheme with fixed parameters.

    ``context_width`` (h) tokens before each position seed its keyed values; ``seeding``
    is one of ``keyed.SEEDINGS``. ``strength`` >= 1 strengthens the watermark at some
    cost in quality (the policy layer's "degrade"); it never goes below 1.

    ``min_temperature`` / ``min_top_p`` are floors on the request's temperature and
    top-p (temperature 0, greedy, is raised too): below them a distribution has too
    little entropy left for any watermark to act on, so a client could switch it off.
    """

    name: ClassVar[str]
    statistic: ClassVar[str]
    """Name of the summed per-token score in detector results."""

    def __init__(self, *, context_width: int = 1, seeding: str = "left",
                 strength: float = 1.0, min_temperature: float = MIN_TEMPERATURE,
                 min_top_p: float = MIN_TOP_P) -> None:
        if not 0.0 <= min_temperature <= 2.0:
            raise ValueError(f"min_temperature must lie in 0..2, got {min_temperature}")
        if not 0.0 <= min_top_p <= 1.0:
            raise ValueError(f"min_top_p must lie in 0..1, got {min_top_p}")
        self.min_temperature = float(min_temperature)
        self.min_top_p = float(min_top_p)
        if not 0 <= int(context_width) <= 16:
            raise ValueError(f"context_width must lie in 0..16, got {context_width}")
        if seeding not in SEEDINGS:
            raise ValueError(f"seeding must be one of {', '.join(SEEDINGS)}, got {seeding!r}")
        if not strength >= 1.0:
            raise ValueError(f"strength must be at least 1, got {strength}")
        self.context_width = int(context_width)
        self.seeding = seeding
        self.strength = float(strength)

    @property
    def params(self) -> dict[str, Any]:
        """JSON-able parameters that reproduce this scheme exactly (``get_scheme``)."""
        return {"context_width": self.context_width, "seeding": self.seeding,
                "strength": self.strength, "min_temperature": self.min_temperature,
                "min_top_p": self.min_top_p}

    def with_strength(self, strength: float) -> Scheme:
        """The same scheme at ``strength`` (>= 1)."""
        return type(self)(**{**self.params, "strength": strength})

    def seed_for(self, partition: KeyedPartition, context: np.ndarray) -> np.uint64 | None:
        """The seed for the next token after ``context``; None when it is too short."""
        h = self.context_width
        if len(context) < h:
            return None
        window = np.asarray(context[len(context) - h:], dtype=np.int64).reshape(1, h)
        return partition.context_seeds(window, self.seeding)[0]

    @abc.abstractmethod
    def sampler(self, partition: KeyedPartition) -> RowSampler:
        """A ``RowSampler`` that embeds this watermark under ``partition``."""

    @abc.abstractmethod
    def process_logits(self, partition: KeyedPartition, context: np.ndarray,
                       logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """Return logits whose ordinary sampling at ``temperature`` embeds the watermark.

        For engines (vLLM) that apply logits processors before their own sampler.
        """

    @abc.abstractmethod
    def token_scores(self, values: np.ndarray) -> np.ndarray:
        """Per-pair contributions (float64) from the keyed values of scored pairs."""

    @abc.abstractmethod
    def p_values(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Exact upper-tail p-values of summed contributions over ``counts`` pairs."""

    @abc.abstractmethod
    def z_scores(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Standardised sums (mean 0, variance 1 under the null); NaN when counts is 0."""

    def describe(self, total: float, count: int) -> dict[str, Any]:
        """Named statistics of one test (the detector adds counts and key facts)."""
        sums, counts = np.array([total], float), np.array([count])
        z = float(self.z_scores(sums, counts)[0])
        return {
            "p_value": float(self.p_values(sums, counts)[0]),
            "z_score": None if math.isnan(z) else z,
            self.statistic: float(total),
        }


class _RowSamplerBase:
    """A scheme bound to one partition, with a scratch buffer and the request's tally.

    One sampler serves one request, and one thread draws for it, so the buffer is never
    shared between threads. A scheme with per-row state (the exponential scheme's free
    prefix) gives each choice its own object from ``for_row``, sharing the tally.
    """

    def __init__(self, scheme: Scheme, partition: KeyedPartition) -> None:
        self.scheme = scheme
        self.partition = partition
        self.tally: dict[str, Any] | None = new_tally()
        self._buf: np.ndarray | None = None

    def effective(self, temperature: float, top_p: float) -> tuple[float, float]:
        return (max(float(temperature), self.scheme.min_temperature),
                max(float(top_p), self.scheme.min_top_p))

    def for_row(self, sampled: bool, max_tokens: int | None = None) -> RowSampler:
        # A stateless scheme serves every row of the request with the same object.
        return self

    def bias_row(self, context: np.ndarray, logits: torch.Tensor,
                 scale: float = 1.0) -> torch.Tensor:
        return logits

    def sample_row(self, context: np.ndarray, logits: torch.Tensor, greedy: bool,
                   generator: torch.Generator | None) -> int:
        return self.draw_row(context, self.bias_row(context, logits), greedy, generator)

    def _count(self, keyed: bool, top: float, token: int, reference: int | None) -> None:
        tally = self.tally
        assert tally is not None
        tally["tokens"] += 1
        if keyed:
            tally["keyed"] += 1
            if top < ACTIVE_TOP_PROBABILITY or (reference is not None and token != reference):
                tally["active"] += 1


@register
class GreenList(Scheme):
    """Green-list watermark (Kirchenbauer et al. 2023).

    Under the keyed values of the current context a fraction ``gamma`` of the vocabulary
    is green (value < gamma * 2**64); the sampler adds ``delta * strength`` to green
    logits. The detector counts green tokens among scored pairs: Binomial(n, gamma)
    under the null, so the p-value is the exact binomial tail.
    """

    name = "greenlist"
    statistic = "green_tokens"

    def __init__(self, *, gamma: float = 0.25, delta: float = 2.0, **common: Any) -> None:
        super().__init__(**common)
        if not 0.0 < gamma < 1.0:
            raise ValueError(f"gamma must lie in (0, 1), got {gamma}")
        if not delta > 0.0:
            raise ValueError(f"delta must be positive, got {delta}")
        self.gamma = float(gamma)
        self.delta = float(delta)
        self._threshold = threshold(self.gamma)

    @property
    def params(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "delta": self.delta, **super().params}

    @property
    def effective_delta(self) -> float:
        """The bias actually added to green logits."""
        return self.delta * self.strength

    def green_mask(self, partition: KeyedPartition, seed: np.uint64, vocab: int,
                   out: np.ndarray | None = None) -> np.ndarray:
        """Boolean ``[vocab]``: which tokens are green after a context with ``seed``."""
        return partition.row_values(seed, vocab, out=out) < self._threshold

    def bias(self, partition: KeyedPartition, context: np.ndarray, logits: torch.Tensor,
             buf: np.ndarray | None = None, scale: float = 1.0) -> torch.Tensor:
        """``logits`` plus ``effective_delta * scale`` on green tokens (a new tensor).

        -inf stays -inf, so tokens that top-p removed stay removed.
        """
        seed = self.seed_for(partition, context)
        if seed is None:
            return logits
        mask = self.green_mask(partition, seed, logits.shape[-1], out=buf)
        import torch

        mask_t = torch.from_numpy(mask).to(logits.device)
        return torch.where(mask_t, logits + self.effective_delta * scale, logits)

    def sampler(self, partition: KeyedPartition) -> RowSampler:
        return _GreenListSampler(self, partition)

    def process_logits(self, partition: KeyedPartition, context: np.ndarray,
                       logits: torch.Tensor, temperature: float) -> torch.Tensor:
        # As in ``sampler``: the bias goes on the raw logits, before the engine's
        # temperature and top-p, scaled up for a temperature above 1.
        return self.bias(partition, context, logits, scale=max(1.0, temperature))

    def token_scores(self, values: np.ndarray) -> np.ndarray:
        return (values < self._threshold).astype(np.float64)

    def p_values(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        sums = np.rint(np.asarray(sums, float))
        counts = np.asarray(counts)
        # bdtrc(k, n, p) = P(X > k), so P(X >= sums) = bdtrc(sums - 1, n, p).
        with np.errstate(invalid="ignore"):
            p = special.bdtrc(sums - 1, counts, self.gamma)
        return np.where((counts > 0) & (sums > 0), np.clip(p, 0.0, 1.0), 1.0)

    def z_scores(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        counts = np.asarray(counts, float)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (np.asarray(sums, float) - self.gamma * counts) / np.sqrt(
                counts * self.gamma * (1.0 - self.gamma))
        return np.where(counts > 0, z, np.nan)

    def describe(self, total: float, count: int) -> dict[str, Any]:
        out = super().describe(total, count)
        out["green_tokens"] = int(round(total))
        out["green_fraction"] = total / count if count else None
        return out


class _GreenListSampler(_RowSamplerBase):
    scheme: GreenList

    def bias_row(self, context: np.ndarray, logits: torch.Tensor,
                 scale: float = 1.0) -> torch.Tensor:
        vocab = logits.shape[-1]
        if self._buf is None or len(self._buf) != vocab:
            self._buf = np.empty(vocab, dtype=np.uint64)
        return self.scheme.bias(self.partition, context, logits, buf=self._buf, scale=scale)

    def draw_row(self, context: np.ndarray, logits: torch.Tensor, greedy: bool,
                 generator: torch.Generator | None, reference: int | None = None) -> int:
        token, top = draw(_float64_copy(logits), greedy, generator)
        self._count(self.scheme.seed_for(self.partition, context) is not None, top, token,
                    reference)
        return token


@register
class Exponential(Scheme):
    """Distortion-free exponential-race sampling (Aaronson 2022; Kuditipudi et al. 2023).

    With r_t the keyed value of token t mapped to (0, 1), the sampler emits
    argmax_t r_t ** (1 / p_t): over the key this is an exact draw from p, so one
    response is distributed as without the watermark. The detector sums -log(1 - r) of
    the emitted tokens; under the null each term is Exp(1), so the sum over n pairs is
    Gamma(n, 1) and the p-value is its exact upper tail.

    The race is a deterministic function of (key, context, distribution), so a context
    that comes back would bring back the same token and text falls into loops (measured:
    perplexity 1.97 against 3.10 unwatermarked with a 1-token context). Two things
    prevent that: a wider context (4 tokens by default), and a context window that
    already occurred earlier in the sequence is sampled normally with the row's
    generator (such pairs carry no evidence anyway: the detector scores each (context,
    token) once). Greedy rows are raced at ``greedy_temperature`` so that temperature 0
    cannot switch the watermark off. ``strength`` s > 1 raises the race's temperature by
    s, which adds entropy and so evidence per token, at a cost in quality.

    Because the race is deterministic, two choices of one request (``n`` > 1) or two
    requests with the same prompt would return the same text. So a sampled row (the
    request asked for a temperature above 0) first draws a *free prefix* with its own
    generator, unkeyed, until the drawn tokens' surprisal -log2 p adds up to
    ``free_bits``; only then does the race take over. The race's seed depends on the
    last ``context_width`` tokens, so rows whose prefixes differ continue differently,
    and two independent rows share a prefix with probability at most 2 ** -free_bits.
    The prefix tokens are ordinary samples: the detector needs no change, they only add
    unwatermarked pairs to what it scores, and the tally counts them as not keyed. A row
    that asked for temperature 0 has no prefix, so the same prompt keeps its answer.
    ``free_bits`` 0 switches the prefix off (every row raced from its first token).
    """

    name = "exponential"
    statistic = "gamma_statistic"

    def __init__(self, *, greedy_temperature: float = 0.7, context_width: int = 4,
                 free_bits: float = FREE_BITS, **common: Any) -> None:
        super().__init__(context_width=context_width, **common)
        if not greedy_temperature > 0.0:
            raise ValueError(f"greedy_temperature must be positive, got {greedy_temperature}")
        if not 0.0 <= free_bits <= 64.0:
            raise ValueError(f"free_bits must lie in 0..64, got {free_bits}")
        self.greedy_temperature = float(greedy_temperature)
        self.free_bits = float(free_bits)

    @property
    def params(self) -> dict[str, Any]:
        return {"greedy_temperature": self.greedy_temperature, "free_bits": self.free_bits,
                **super().params}

    def choose(self, partition: KeyedPartition, seed: np.uint64,
               logits: torch.Tensor) -> int:
        """The race winner argmax r_t ** (1/p_t) under softmax(logits / strength)."""
        return self.race(partition, seed, logits)[0]

    def race(self, partition: KeyedPartition, seed: np.uint64,
             logits: torch.Tensor) -> tuple[int, float]:
        """(``choose``'s token, the probability of the most likely token it raced)."""
        x = _float64_copy(logits)
        if self.strength != 1.0:
            x /= self.strength
        x -= x.max()
        p = np.exp(x, out=x)  # unnormalised: the argmax below does not depend on scale
        top = 1.0 / float(p.sum())
        if np.all(p > 0):
            r = to_unit(partition.row_values(seed, len(p)))
            support = None
        else:  # top-p removed tokens: evaluate the keyed function on the rest only
            support = np.flatnonzero(p > 0)
            p = p[support]
            r = to_unit(partition.values(np.full(len(support), seed, np.uint64), support))
        # log(r) / p is monotone in r ** (1/p) and stays finite where that underflows.
        race = np.log(r, out=r)
        race /= p
        best = int(np.argmax(race))
        return (best if support is None else int(support[best])), top

    def sampler(self, partition: KeyedPartition) -> RowSampler:
        return _ExponentialSampler(self, partition)

    def race_seed(self, partition: KeyedPartition, context: np.ndarray) -> np.uint64 | None:
        """The seed to race with, or None: context too short or its window seen before."""
        if _window_seen_before(context, self.context_width):
            return None
        return self.seed_for(partition, context)

    def process_logits(self, partition: KeyedPartition, context: np.ndarray,
                       logits: torch.Tensor, temperature: float) -> torch.Tensor:
        # The race only: the free prefix is per-row state, which the caller keeps
        # (``vllm_adapter.RequestWatermark`` passes the logits through while it lasts).
        seed = self.race_seed(partition, context)
        if seed is None:
            return logits
        t = temperature if temperature > 0 else self.greedy_temperature
        token = self.choose(partition, seed, logits / t)
        import torch

        forced = torch.full_like(logits, float("-inf"))
        forced[token] = 0.0
        return forced

    def token_scores(self, values: np.ndarray) -> np.ndarray:
        return -np.log1p(-to_unit(values))

    def p_values(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        counts = np.asarray(counts)
        safe = np.maximum(counts, 1)
        p = special.gammaincc(safe, np.asarray(sums, float))
        return np.where(counts > 0, p, 1.0)

    def z_scores(self, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        counts = np.asarray(counts, float)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (np.asarray(sums, float) - counts) / np.sqrt(counts)
        return np.where(counts > 0, z, np.nan)


def _window_seen_before(context: np.ndarray, width: int) -> bool:
    """Whether the last ``width`` tokens of ``context`` also occur earlier in it.

    Width 0 (one seed for every position) never counts as repeated, else nothing after
    the first token would be watermarked.
    """
    context = np.asarray(context)
    if width == 0 or len(context) <= width:
        return False
    earlier = np.lib.stride_tricks.sliding_window_view(context[:-1], width)
    return bool((earlier == context[-width:]).all(axis=1).any())


class FreePrefix:
    """What a row still has of its free prefix: bits of surprisal and tokens.

    At most an eighth of the row's ``max_tokens`` are free (none below 8): otherwise a
    client fetching an answer a few tokens per request, each request a new row, gets
    only prefix tokens (measured: chunks of 8 tokens at temperature 0.7 gave a median p
    of 0.43). Shared by the local sampler and the vLLM adapter.
    """

    def __init__(self, bits: float, max_tokens: int | None = None) -> None:
        self.bits = bits
        self.tokens = None if max_tokens is None else max(0, int(max_tokens)) // 8
        """Tokens the row may still draw free (None: no cap)."""

    @property
    def open(self) -> bool:
        return self.bits > 0.0 and self.tokens != 0

    def take(self, bits: float = 0.0) -> None:
        """One token drawn free, of ``bits`` surprisal (or spent later with ``spend``)."""
        self.bits -= bits
        if self.tokens is not None:
            self.tokens -= 1

    def spend(self, bits: float) -> None:
        self.bits -= bits


class _ExponentialSampler(_RowSamplerBase):
    """The race, after a free prefix of ``free_bits`` (see ``Exponential``).

    The object ``Exponential.sampler`` returns is itself one row (a sampled one, unless
    drawn from with ``greedy``); ``for_row`` gives each further choice its own prefix.
    """

    scheme: Exponential

    def __init__(self, scheme: Exponential, partition: KeyedPartition, *,
                 tally: dict[str, Any] | None = None, sampled: bool = True,
                 max_tokens: int | None = None) -> None:
        super().__init__(scheme, partition)
        if tally is not None:
            self.tally = tally
        self.prefix = FreePrefix(scheme.free_bits if sampled else 0.0, max_tokens)
        """What this row still draws unkeyed before the race takes over."""

    def for_row(self, sampled: bool, max_tokens: int | None = None) -> RowSampler:
        return _ExponentialSampler(self.scheme, self.partition, tally=self.tally,
                                   sampled=sampled, max_tokens=max_tokens)

    def draw_row(self, context: np.ndarray, logits: torch.Tensor, greedy: bool,
                 generator: torch.Generator | None, reference: int | None = None) -> int:
        if self.prefix.open and not greedy:
            token, top, bits = draw_with_surprisal(logits, generator)
            self.prefix.take(bits)
            self._count(False, top, token, reference)
            return token
        seed = self.scheme.race_seed(self.partition, context)
        if seed is None:
            token, top = draw(_float64_copy(logits), greedy, generator)
            self._count(False, top, token, reference)
            return token
        if greedy:
            logits = logits / self.scheme.greedy_temperature
        token, top = self.scheme.race(self.partition, seed, logits)
        self._count(True, top, token, reference)
        return token

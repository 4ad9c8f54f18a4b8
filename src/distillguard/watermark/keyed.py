"""The one keyed function that both embedding and detection use.

``KeyedPartition`` turns a 32-byte key into a per-token table of 64-bit values (a
Philox stream keyed by the first 16 bytes, so the table for a larger vocabulary is an
extension of the smaller one and never changes what a token id maps to). Every keyed
value the package ever computes is

    value(key, context, token) = mix64(table[token] XOR context_seed(key, context))

with ``mix64`` the splitmix64 finaliser, a bijection with full avalanche. The sampler
evaluates it for the whole vocabulary at one context (``row_values``); the detector for
many (context, token) pairs at once (``values``). Both go through ``_prf``: nothing is
written twice, so what the detector checks is exactly what the sampler embedded.

The table comes from Philox (a counter-based generator) keyed by an HMAC-SHA256-derived
key, so table values reveal nothing usable about the master secret. ``mix64`` is a
statistical hash, not a cryptographic one: what protects the watermark is that the
table (2**64 possibilities per token) stays on the server. Someone who collects many
outputs can still estimate frequent green lists (true of every green-list scheme with a
short context); a wider context or min-hash seeding makes that harder.
"""

from __future__ import annotations

import numpy as np

_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
# Public constants that separate the roles of one table value (as a target token, as
# a context token, as an aggregate) so that value(a | b) and value(b | a) differ.
_CONTEXT_SALT = np.uint64(0x6A09E667F3BCC909)
_ORDER_SALT = np.uint64(0xBB67AE8584CAA73B)
_FINGERPRINT_SEED = np.uint64(0x3C6EF372FE94F82B)

SEEDINGS = ("left", "min")
"""How a context window becomes a seed.

``left``: a hash of the ``h`` previous tokens in order (Kirchenbauer et al.'s LeftHash).
``min``: the minimum keyed table value over the ``h`` previous tokens (MinHash): the
seed depends only on the *set* of tokens in the window and stays the same under any edit
that neither removes nor undercuts the window's minimum, which makes the watermark
survive more local edits when ``h`` > 1.
"""


def mix64(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """splitmix64's finaliser applied element-wise to a uint64 array (wraps mod 2**64).

    With ``out`` the work happens in that buffer (which may be ``x`` itself), which keeps
    the per-step cost of the sampler free of allocations.
    """
    if out is None:
        out = np.array(x, dtype=np.uint64, copy=True)
    elif out is not x:
        np.copyto(out, x)
    tmp = np.right_shift(out, _S30)
    np.bitwise_xor(out, tmp, out=out)
    np.multiply(out, _C1, out=out)
    np.right_shift(out, _S27, out=tmp)
    np.bitwise_xor(out, tmp, out=out)
    np.multiply(out, _C2, out=out)
    np.right_shift(out, _S31, out=tmp)
    np.bitwise_xor(out, tmp, out=out)
    return out


def to_unit(values: np.ndarray) -> np.ndarray:
    """Map uint64 values to floats strictly inside (0, 1), uniform when values are."""
    return (np.right_shift(values, np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def threshold(fraction: float) -> np.uint64:
    """The uint64 ``t`` with P(value < t) = ``fraction`` for a uniform 64-bit value."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    return np.uint64(min(int(fraction * 2.0**64), 2**64 - 1))


def context_windows(ids: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a token sequence into (windows ``[n, width]``, targets ``[n]``).

    Target ``i`` is ``ids[width + i]`` and its window the ``width`` tokens before it; the
    first ``width`` tokens have no full context and are not targets.
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    n = max(len(ids) - width, 0)
    if width == 0:
        return np.empty((n, 0), dtype=np.int64), ids
    if n == 0:
        return np.empty((0, width), dtype=np.int64), ids[:0]
    windows = np.lib.stride_tricks.sliding_window_view(ids, width)[:n]
    return windows, ids[width:]


def fingerprints(windows: np.ndarray, targets: np.ndarray, seeding: str) -> np.ndarray:
    """Key-independent 64-bit fingerprints of (seed-determining context, target).

    Two positions with equal fingerprints get the same keyed value under *every* key,
    so the detector scores only one of them. With ``min`` seeding the seed depends on
    the set of window tokens, so the window is reduced to a sorted set first (and
    ``seeded_duplicates`` removes the key-dependent rest).
    """
    _check_seeding(seeding)
    if seeding == "min" and windows.shape[1] > 1:
        windows = np.sort(windows, axis=1)
        dup = np.zeros(windows.shape, dtype=bool)
        dup[:, 1:] = windows[:, 1:] == windows[:, :-1]
        windows = np.where(dup, -1, windows)
    acc = mix64(targets.astype(np.uint64) ^ _FINGERPRINT_SEED)
    for j in range(windows.shape[1]):
        np.bitwise_xor(acc, windows[:, j].astype(np.uint64), out=acc)
        acc = mix64(acc + _ORDER_SALT, out=acc)
    return acc


def seeded_duplicates(seeds: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Boolean mask of pairs whose (seed, target) occurred earlier in the arrays.

    Needed under ``min`` seeding, where different windows share a seed whenever they
    share their minimum token; which windows do depends on the key.
    """
    dup = np.ones(len(targets), dtype=bool)
    if len(targets):
        combo = mix64(mix64(targets.astype(np.uint64) ^ _FINGERPRINT_SEED) ^ seeds)
        _, first = np.unique(combo, return_index=True)
        dup[first] = False
    return dup


def first_occurrences(windows: np.ndarray, targets: np.ndarray, seeding: str) -> np.ndarray:
    """Indices (ascending) of the first occurrence of each distinct (context, target)."""
    if len(targets) == 0:
        return np.empty(0, dtype=np.int64)
    _, first = np.unique(fingerprints(windows, targets, seeding), return_index=True)
    first.sort()
    return first


def _check_seeding(seeding: str) -> None:
    if seeding not in SEEDINGS:
        raise ValueError(f"unknown seeding {seeding!r}; choose one of {', '.join(SEEDINGS)}")


class KeyedPartition:
    """The keyed function of one derived key (one key id, one cohort, one scheme)."""

    def __init__(self, key: bytes, vocab_size: int = 49_152) -> None:
        if len(key) < 16:
            raise ValueError("a partition key needs at least 16 bytes")
        self._philox_key = int.from_bytes(key[:16], "little")
        self._table = self._make_table(vocab_size)

    def _make_table(self, size: int) -> np.ndarray:
        bits = np.random.Philox(key=self._philox_key)
        return bits.random_raw(size).astype(np.uint64, copy=False)

    def table(self, size: int) -> np.ndarray:
        """The first ``size`` table values (the table grows on demand, prefix-stable)."""
        table = self._table
        if len(table) < size:
            # Grow geometrically; the new array replaces the old one in one assignment,
            # so a reader in another thread sees either table, both correct.
            table = self._make_table(max(size, 2 * len(table)))
            self._table = table
        return table[:size]

    def _token_values(self, tokens: np.ndarray) -> np.ndarray:
        top = int(tokens.max()) + 1 if tokens.size else 0
        if top and int(tokens.min()) < 0:
            raise ValueError("token ids must be non-negative")
        return self.table(top)[tokens] if tokens.size else np.empty(tokens.shape, np.uint64)

    def context_seeds(self, windows: np.ndarray, seeding: str = "left") -> np.ndarray:
        """Seeds ``[n]`` for context windows ``[n, h]`` (see ``SEEDINGS``)."""
        _check_seeding(seeding)
        windows = np.asarray(windows, dtype=np.int64)
        n, width = windows.shape
        if width == 0:
            return np.full(n, _CONTEXT_SALT, dtype=np.uint64)
        vals = self._token_values(windows)
        if seeding == "min":
            acc = vals.min(axis=1)
        else:
            acc = vals[:, 0].copy()
            for j in range(1, width):
                acc = mix64(acc + _ORDER_SALT, out=acc)
                np.bitwise_xor(acc, vals[:, j], out=acc)
        np.bitwise_xor(acc, _CONTEXT_SALT, out=acc)
        return mix64(acc, out=acc)

    def values(self, seeds: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Keyed values for (seed, token) pairs: the detector's view of ``_prf``."""
        tokens = np.asarray(tokens, dtype=np.int64)
        return _prf(self._token_values(tokens), np.asarray(seeds, dtype=np.uint64))

    def row_values(self, seed: np.uint64, vocab_size: int,
                   out: np.ndarray | None = None) -> np.ndarray:
        """Keyed values of every token ``0..vocab_size-1`` at one seed: the sampler's view."""
        return _prf(self.table(vocab_size), seed, out=out)


def _prf(token_values: np.ndarray, seeds: np.ndarray | np.uint64,
         out: np.ndarray | None = None) -> np.ndarray:
    """value = mix64(table[token] XOR seed): the single keyed function of the package."""
    if out is None:
        out = np.empty(np.broadcast_shapes(np.shape(token_values), np.shape(seeds)), np.uint64)
    np.bitwise_xor(token_values, seeds, out=out)
    return mix64(out, out=out)

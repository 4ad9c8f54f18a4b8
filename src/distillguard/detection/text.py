"""Prompt text features shared by signals and campaigns: masking, MinHash, turns.

Events record the prompt as ``role: text`` lines (see ``gateway.schema.prompt_text``).
Templating is judged on the last user turn with its variable parts masked: numbers,
quoted spans, capitalised names, e-mail addresses and URLs become placeholders, so
"Solve: 17 + 4" and "Solve: 230 + 9" share a skeleton.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

MINHASH_PERMUTATIONS = 32
LSH_BANDS = 8  # 8 bands x 4 rows: pairs above ~0.6 Jaccard collide in some band
_ROWS = MINHASH_PERMUTATIONS // LSH_BANDS
# Most shingles hashed per prompt: bounds the cost of a pasted document.
MAX_SHINGLES = 96

_rng = np.random.default_rng(0x5EED)
_A = (_rng.integers(1, 2**63, MINHASH_PERMUTATIONS, dtype=np.uint64) | np.uint64(1))
_B = _rng.integers(0, 2**63, MINHASH_PERMUTATIONS, dtype=np.uint64)

# Spans replaced before tokenising: URLs, e-mail addresses and quoted text.
_SPANS = re.compile(r"https?://\S+|[\w.+-]+@[\w-]+\.[\w.]+|\"[^\"\n]{1,200}\"|“[^”\n]{1,200}”"
                    r"|`[^`\n]{1,200}`|「[^」]{1,200}」|'[^'\n]{2,200}'(?!\w)")
# Words, and the punctuation that ends a sentence (the next word may be capitalised).
_WORD = re.compile(r"\w+|[.!?:;\n]", re.UNICODE)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
_SHIFT = np.uint64(16)
_G1, _G2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)
_BAND_MIX = (_rng.integers(1, 2**63, _ROWS, dtype=np.uint64) | np.uint64(1))
_ENDS = frozenset(".!?:;\n")


def skeleton_words(text: str) -> list[str]:
    """The prompt's skeleton as words: variable parts become placeholders.

    Quoted spans and URLs become ``"Q"``; numbers ``"#"``; a capitalised word that does
    not start a sentence (most often a name) ``"N"``; other words are lower-cased. CJK
    text, which has no spaces, is taken character by character.
    """
    text = _SPANS.sub(" Q ", text)
    if _CJK.search(text):
        return [c for c in text if not c.isspace()]
    words = _WORD.findall(text)
    out = []
    prev = "."
    for w in words:
        if w in _ENDS:
            prev = "."
            continue
        if w[0].isdigit():
            out.append("#")
        elif w == "Q":
            out.append("Q")
        elif w[0].isupper() and prev != "." and not w.isupper():
            out.append("N")
        else:
            out.append(w.lower())
        prev = w
    return out


def shingle_hashes(words: list[str]) -> np.ndarray:
    """uint64 hashes of word 3-grams (of all words when fewer than 3)."""
    if len(words) > MAX_SHINGLES + 2:
        # Keep the head and the tail: templates show at both ends of a prompt.
        half = MAX_SHINGLES // 2
        words = words[:half + 2] + words[-half - 2:]
    w = np.fromiter((zlib.crc32(x.encode()) for x in words), dtype=np.uint64,
                    count=len(words))
    if len(w) < 3:
        return np.array([int(w.sum()) if len(w) else 0], dtype=np.uint64)
    # Array arithmetic in uint64 wraps without warnings (scalars would warn).
    return w[:-2] * _G1 + w[1:-1] * _G2 + w[2:]


def minhash(hashes: np.ndarray) -> np.ndarray:
    """MinHash signature (``MINHASH_PERMUTATIONS`` uint64) of a set of shingle hashes."""
    # Multiply-shift hashing in wrapping uint64 arithmetic: cheap universal permutations.
    return ((np.multiply.outer(_A, hashes) + _B[:, None]) >> _SHIFT).min(axis=1)


def lsh_bands(signature: np.ndarray) -> tuple[int, ...]:
    """One hash per LSH band; two prompts that share any band are near-duplicates."""
    mixed = (signature.reshape(LSH_BANDS, _ROWS) * _BAND_MIX).sum(axis=1) >> _SHIFT
    # The band number is folded in so that equal rows in different bands never match.
    return tuple(v ^ band for band, v in enumerate(mixed.tolist()))


def template_bands(turn: str) -> tuple[int, ...]:
    """LSH bands of a user turn's skeleton (empty for an empty turn)."""
    return template_features(turn)[0]


# A wrapper is this many skeleton words at either end of a prompt at least
# WRAPPER_MIN_WORDS long: long enough that everyday openings ("can you help me") do not
# coincide, short enough to catch "Explain in detail, reasoning step by step: {q}".
WRAPPER_WORDS = 6
WRAPPER_MIN_WORDS = 14


def wrapper_hashes(words: list[str]) -> tuple[int, ...]:
    """Hashes of a skeleton's first and last ``WRAPPER_WORDS`` words (a fixed wrapper
    around varying questions shares them; whole-prompt MinHash does not see it).

    Empty for skeletons under ``WRAPPER_MIN_WORDS`` words, where the ends are the prompt.
    """
    if len(words) < WRAPPER_MIN_WORDS:
        return ()
    head = zlib.crc32(("^ " + " ".join(words[:WRAPPER_WORDS])).encode())
    tail = zlib.crc32(("$ " + " ".join(words[-WRAPPER_WORDS:])).encode())
    # Tagged apart from band hashes (which stay below 2**48) so the two never collide.
    return (head | 1 << 60, tail | 1 << 61)


def template_features(turn: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(LSH bands, wrapper hashes) of a user turn's skeleton, computed once."""
    words = skeleton_words(turn)
    if not words:
        return (), ()
    return lsh_bands(minhash(shingle_hashes(words))), wrapper_hashes(words)

"""Real ShareGPT conversations as lists of user turns (see ``distillguard.sharegpt``),
so that benign sessions can ask real follow-up questions."""

from __future__ import annotations

import functools

from distillguard import sharegpt


def _kept(turns: list[str], min_chars: int, max_chars: int) -> bool:
    return bool(turns) and min_chars <= len(turns[0]) <= max_chars


@functools.lru_cache(maxsize=4)
def end_index(limit: int = 8000, *, min_chars: int = 8, max_chars: int = 1500) -> int:
    """The file index just after the last record ``conversations(limit)`` takes: data
    built from records at or after it (the priors) shares none with the simulator's."""
    kept = 0
    for index, record in enumerate(sharegpt.conversations()):
        if _kept(sharegpt.human_turns(record), min_chars, max_chars):
            kept += 1
            if kept >= limit:
                return index + 1
    return index + 1 if kept else 0


@functools.lru_cache(maxsize=4)
def conversations(limit: int = 4000, *, min_chars: int = 8,
                  max_chars: int = 1500) -> tuple[tuple[str, ...], ...]:
    """Up to ``limit`` conversations as tuples of their human turns, in file order.

    A conversation is kept when its first human turn has ``min_chars``..``max_chars``
    characters (greetings and pasted documents say little about what a user asks);
    later turns longer than ``max_chars`` are cut there.
    """
    out: list[tuple[str, ...]] = []
    for record in sharegpt.conversations():
        turns = sharegpt.human_turns(record)
        if not _kept(turns, min_chars, max_chars):
            continue
        out.append(tuple(t[:max_chars] for t in turns))
        if len(out) >= limit:
            break
    return tuple(out)

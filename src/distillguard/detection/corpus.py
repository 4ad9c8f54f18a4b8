"""First user turns of the real ShareGPT prompts (see ``distillguard.sharegpt``)."""

from __future__ import annotations

from collections.abc import Iterator

from distillguard import sharegpt


def sharegpt_first_turns(*, min_chars: int = 8, max_chars: int = 2000) -> Iterator[str]:
    """First human turns of ShareGPT conversations, in file order.

    Turns shorter than ``min_chars`` or longer than ``max_chars`` are skipped (greetings
    and pasted documents say little about what a user asks).
    """
    for record in sharegpt.conversations():
        turns = sharegpt.human_turns(record)
        if turns and min_chars <= len(turns[0]) <= max_chars:
            yield turns[0]

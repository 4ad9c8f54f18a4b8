"""Token ids in, safe text out: incremental detokenization with text-level stop strings.

A stream may only show text that will never be taken back. Two things could take text
back: a token that ends in the middle of a UTF-8 character (the byte-level tokenizer
decodes it to U+FFFD until the next token completes it), and text that could be the
start of a stop string, which must vanish if the stop string completes. ``TextStream``
holds both back until they are settled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[Sequence[int]], str]


class TextStream:
    """Turn one choice's generated token ids into text pieces, cut at the first stop string.

    ``push(token)`` returns the text that became safe to show; once a stop string
    appears, ``stopped`` is True and the output ends just before it. ``finish()``
    returns what was held back when generation ends for another reason. Concatenating
    every piece gives the choice's final text.
    """

    def __init__(self, decode: Decode, stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stops = [s for s in stop if s]
        self._ids: list[int] = []
        # Offsets in the style of TGI/vLLM: decoding from ``_prefix`` gives the tokenizer
        # context for the leading space of the next word; ``_read`` is how far ids were
        # turned into text.
        self._prefix = 0
        self._read = 0
        self._text = ""
        self._emitted = 0
        self.stopped = False

    @property
    def text(self) -> str:
        """Text shown so far."""
        return self._text[: self._emitted]

    def push(self, token: int) -> str:
        """Add one generated token; return the newly safe text (often empty)."""
        if self.stopped:
            return ""
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # an incomplete character: wait for the next token
        self._text += after[len(before) :]
        self._prefix, self._read = self._read, len(self._ids)
        return self._release()

    def finish(self) -> str:
        """Generation ended without a stop string: release everything still held back."""
        if self.stopped:
            return ""
        if self._read < len(self._ids):
            before = self._decode(self._ids[self._prefix : self._read])
            after = self._decode(self._ids[self._prefix :])
            self._text += after[len(before) :]
            self._read = len(self._ids)
        # A stop string may still complete inside the last piece.
        piece = self._release()
        if self.stopped:
            return piece
        piece += self._text[self._emitted :]
        self._emitted = len(self._text)
        return piece

    def _release(self) -> str:
        start = self._emitted
        # No stop string can begin before ``_emitted``: text is only released once no
        # suffix of it is a prefix of a stop string.
        cut = min(
            (pos for pos in (self._text.find(s, start) for s in self._stops) if pos >= 0),
            default=-1,
        )
        if cut >= 0:
            self.stopped = True
            self._text = self._text[:cut]
            self._emitted = cut
            return self._text[start:cut]
        end = len(self._text) - self._held_back(start)
        self._emitted = max(start, end)
        return self._text[start : self._emitted]

    def _held_back(self, start: int) -> int:
        """Length of the longest tail of the unreleased text that starts a stop string."""
        tail = self._text[start:]
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(tail)), longest, -1):
                if tail.endswith(stop[:size]):
                    longest = size
                    break
        return longest

"""``EchoBackend``: an instant, deterministic in-process backend.

It answers by repeating the words of the prompt (the last user message for chat), so the
gateway, the simulator's live mode and the benchmarks can run without a model or a
network. Tokens are whitespace words: ``prompt_tokens`` counts the words of every
message (or of the prompt), ``completion_tokens`` the words of each answer.

Choice ``i`` starts ``i`` words into the prompt, so the ``n`` choices differ. An answer
has ``tokens`` words (finish ``stop``) unless ``max_tokens`` is smaller (finish
``length``); a stop string cuts the answer before its first occurrence (finish ``stop``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from distillguard.backends.base import (
    Choice,
    Completion,
    FinishReason,
    GenerationRequest,
    StreamDelta,
    StreamEnd,
    StreamItem,
)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(part.get("text", "")) for part in content
                        if isinstance(part, dict) and part.get("type", "text") == "text")
    return ""


class EchoBackend:
    """A ``Backend`` that echoes prompt words; see the module docstring for the rules."""

    def __init__(self, model_name: str = "echo", tokens: int = 16) -> None:
        if tokens < 1:
            raise ValueError("tokens must be at least 1")
        self.model_name = model_name
        self.tokens = tokens

    @classmethod
    def from_settings(cls, settings: Any) -> EchoBackend:
        """An echo backend serving ``settings.model_name``, ``echo_tokens`` words an answer."""
        return cls(model_name=settings.model_name, tokens=settings.echo_tokens)

    async def start(self) -> None:
        """Nothing to load."""

    async def close(self) -> None:
        """Nothing to release."""

    def models(self) -> list[str]:
        """The one public model name."""
        return [self.model_name]

    async def complete(self, request: GenerationRequest) -> Completion:
        """All ``n`` answers at once."""
        source, prompt_tokens = self._source(request)
        choices = []
        for index in range(request.n):
            words, finish = self._answer(source, index, request)
            choices.append(Choice(index=index, text=" ".join(words), finish_reason=finish,
                                  completion_tokens=len(words)))
        result = Completion(choices=choices, prompt_tokens=prompt_tokens,
                            completion_tokens=sum(c.completion_tokens for c in choices))
        request.usage.prompt_tokens = prompt_tokens
        request.usage.completion_tokens = result.completion_tokens
        return result

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """One delta per word (choices one after another), then ``StreamEnd``."""
        source, prompt_tokens = self._source(request)
        request.usage.prompt_tokens = prompt_tokens
        total = 0
        for index in range(request.n):
            words, finish = self._answer(source, index, request)
            total += len(words)
            for position, word in enumerate(words):
                text = word if position == 0 else " " + word
                last = position == len(words) - 1
                request.usage.completion_tokens += 1
                yield StreamDelta(index=index, text=text, finish_reason=finish if last else None)
            if not words:
                yield StreamDelta(index=index, text="", finish_reason=finish)
        yield StreamEnd(prompt_tokens=prompt_tokens, completion_tokens=total)

    @staticmethod
    def _source(request: GenerationRequest) -> tuple[list[str], int]:
        """(words to echo, prompt token count)."""
        if request.kind == "chat":
            texts = [_content_text(m.get("content")) for m in request.messages or ()]
            user = [_content_text(m.get("content")) for m in request.messages or ()
                    if m.get("role") == "user"]
            echo = (user or texts or [""])[-1]
            prompt_tokens = sum(len(t.split()) for t in texts)
        else:
            echo = request.prompt or ""
            prompt_tokens = len(echo.split())
        return echo.split() or ["echo"], prompt_tokens

    def _answer(self, source: list[str], index: int,
                request: GenerationRequest) -> tuple[list[str], FinishReason]:
        count = min(self.tokens, request.max_tokens)
        finish: FinishReason = "length" if request.max_tokens < self.tokens else "stop"
        words = [source[(index + k) % len(source)] for k in range(count)]
        if request.stop:
            text = " ".join(words)
            cut = min((p for p in (text.find(s) for s in request.stop if s) if p >= 0),
                      default=-1)
            if cut >= 0:
                words = text[:cut].split()
                finish = "stop"
        return words, finish

"""``strip_reasoning``: the text a degraded account gets, without reasoning traces.

Definition (applied in this order):

1. Reasoning blocks are removed: ``<think>…</think>``, ``<thinking>…</thinking>``,
   ``<reasoning>…</reasoning>`` (tags case-insensitive, spanning lines). A block opened
   and never closed removes everything from its opening tag to the end (a model cut off
   mid-thought). A stray closing tag with no opening (the opening was in the prompt
   template) removes everything before it.
2. A step-by-step preamble is removed when the text also states a final answer: if a
   line starts with a final-answer marker (``Final answer:``, ``Answer:``,
   ``**Final Answer**``, ``Therefore, the answer is``, ``So the answer is``; case-
   insensitive, optional markdown ``#``/``*``) and some earlier line starts with a step
   marker (``Step 1``, ``1.``, ``First,``, ``Let's think``, ``Let me think``), everything
   before the first such answer line goes. Text without both is left as it is: an
   ordinary numbered list is content, not a reasoning trace.
3. Surrounding whitespace is trimmed.
"""

from __future__ import annotations

import re

_BLOCK = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.IGNORECASE | re.DOTALL)
_OPEN = re.compile(r"<(think|thinking|reasoning)>", re.IGNORECASE)
_STRAY_CLOSE = re.compile(r"^.*?</(think|thinking|reasoning)>", re.IGNORECASE | re.DOTALL)
_ANSWER = re.compile(r"^[#*\s]*(final answer|answer|therefore,? the answer is|so,? the answer "
                     r"is)\b[*:\s]*", re.IGNORECASE | re.MULTILINE)
_STEP = re.compile(r"^[#*\s]*(step\s*\d+|\d+[.)]\s|first,|let'?s think|let me think)",
                   re.IGNORECASE | re.MULTILINE)


def strip_reasoning(text: str) -> str:
    """``text`` without reasoning traces, as defined in the module docstring."""
    text = _BLOCK.sub("", text)
    opened = _OPEN.search(text)
    if opened:
        text = text[:opened.start()]
    else:  # no-op without a closing tag
        text = _STRAY_CLOSE.sub("", text, count=1)
    answer = _ANSWER.search(text)
    if answer:
        step = _STEP.search(text, 0, answer.start())
        if step:
            text = text[answer.start():]
    return text.strip()

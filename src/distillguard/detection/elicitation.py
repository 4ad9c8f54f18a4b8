"""Does a prompt elicit reasoning traces or build a dataset?

Two judges, either suffices:

- cue patterns in the languages ShareGPT holds most (English, Chinese, Spanish,
  French, German, Portuguese, Russian, Japanese, Korean): "step by step", "chain of
  thought", "grade with a rubric", "output as JSON rows", "generate 20 questions", ...;
- embedding similarity to exemplar prompts (the same languages), which catches
  paraphrases no pattern lists ("walk me through your thinking before answering").

The exemplars and the similarity threshold are fixed here; ``bench/detection.py``
prints how often each judge fires on real ShareGPT first prompts.
"""

from __future__ import annotations

import re

import numpy as np

from distillguard.detection.embedder import Embedder

_CUES = re.compile("|".join([
    # English
    r"step[- ]by[- ]step", r"chain[- ]of[- ]thought", r"\bthink (it )?through\b",
    r"show(ing)? (all )?(of )?(your|the) (full )?(reasoning|work|thinking|steps)",
    r"(full|complete|entire) (reasoning|chain of thought|thought process)",
    r"explain your reasoning",
    r"reason(ing)? (carefully )?before (you )?answer", r"<think>",
    r"\brubric\b", r"grade (the|this|each) (answer|response)",
    r"score (the|this|each) (answer|response) (from|on)",
    r"rewrite (it |this |the (text|following) )?(safely|to be safe|in a safe)",
    r"(as|in) (a )?json (array|lines|rows|objects?)", r"\bjsonl\b",
    r"generate \d+ (new |diverse |synthetic |unique )?"
    r"(questions|examples|tasks|problems|prompts|samples)",
    r"synthetic (data|dataset|examples|tasks)", r"training (data|examples|set) for",
    r"(instruction|response) pairs?",
    # Chinese
    r"一步一步", r"逐步", r"思维链", r"推理过程", r"详细(的)?推理", r"评分标准",
    r"生成\d+(个|道|条)",
    r"JSON格式", r"训练数据",
    # Spanish / Portuguese
    r"paso a paso", r"cadena de pensamiento", r"razonamiento", r"passo a passo",
    r"genera \d+ (preguntas|ejemplos)", r"gere \d+ (perguntas|exemplos)", r"rúbrica",
    # French
    r"étape par étape", r"raisonnement", r"chaîne de pensée", r"génère \d+ (questions|exemples)",
    # German
    r"schritt für schritt", r"gedankenkette", r"begründe deine antwort", r"bewertungsraster",
    # Russian
    r"шаг за шагом", r"пошагово", r"цепочк\w+ рассуждени", r"сгенерируй \d+",
    # Japanese / Korean
    r"ステップバイステップ", r"段階的に", r"思考過程", r"推論過程",
    r"단계별로", r"차근차근", r"추론 과정",
]), re.IGNORECASE)

EXEMPLARS = (
    "Solve this problem step by step and show all of your reasoning before the final answer.",
    "Think through the problem carefully, explaining each step of your chain of thought.",
    "Walk me through your thinking in detail before you give the answer.",
    "Explain your reasoning for each step, then state the final answer on the last line.",
    "Grade the following answer from 1 to 10 using this rubric and justify the score.",
    "You are a strict grader. Score the response on correctness, clarity and completeness.",
    "Evaluate which of the two responses is better and explain why in detail.",
    "Rewrite the following text so that it is safe and harmless while keeping the meaning.",
    "Generate 20 diverse math word problems with detailed step-by-step solutions.",
    "Create 50 synthetic question and answer pairs about biology in JSON lines format.",
    "Output the result as a JSON array of objects with fields instruction, input and output.",
    "Write 10 new instructions for training a language model, each with an ideal response.",
    "Produce a numbered list of 30 coding tasks, each with a complete reference solution.",
    "请一步一步地思考，并详细写出你的推理过程，最后给出答案。",
    "请根据评分标准给下面的回答打分，并解释理由。",
    "生成20道数学题及详细解答，以JSON格式输出。",
    "Resuelve el problema paso a paso y explica tu razonamiento antes de la respuesta final.",
    "Genera 20 preguntas con sus respuestas detalladas en formato JSON.",
    "Résous ce problème étape par étape en expliquant ton raisonnement.",
    "Löse die Aufgabe Schritt für Schritt und begründe jeden Schritt.",
    "Реши задачу шаг за шагом и подробно объясни ход рассуждений.",
    "この問題をステップバイステップで解き、思考過程を詳しく説明してください。",
    "이 문제를 단계별로 풀고 추론 과정을 자세히 설명해 주세요.",
    "Resolva o problema passo a passo e explique seu raciocínio.",
)


def cue_match(text: str) -> bool:
    """True when ``text`` holds one of the cue patterns (no embedding needed)."""
    return _CUES.search(text) is not None


# Cosine similarity to the nearest exemplar above which a prompt counts as eliciting.
SIMILARITY_THRESHOLD = 0.6


class Elicitation:
    """Judges prompts; the exemplar embeddings are computed on first use."""

    def __init__(self, embedder: Embedder | None = None,
                 threshold: float = SIMILARITY_THRESHOLD) -> None:
        self.embedder = embedder
        self.threshold = threshold
        self._exemplars: np.ndarray | None = None

    def by_cue(self, text: str) -> bool:
        """True when the text holds one of the cue patterns."""
        return cue_match(text)

    def exemplars(self) -> np.ndarray | None:
        """The exemplars' embeddings, one row each (None without an embedder)."""
        if self._exemplars is None and self.embedder is not None:
            self._exemplars = self.embedder.embed(list(EXEMPLARS))
        return self._exemplars

    def similarity(self, embedding: np.ndarray) -> float:
        """Cosine similarity of a prompt embedding to the nearest exemplar."""
        exemplars = self.exemplars()
        if exemplars is None:
            return 0.0
        return float((exemplars @ embedding).max())

    def elicits(self, text: str, embedding: np.ndarray | None) -> bool:
        """True when a cue pattern matches or the embedding is close to an exemplar."""
        if self.by_cue(text):
            return True
        return embedding is not None and self.similarity(embedding) >= self.threshold

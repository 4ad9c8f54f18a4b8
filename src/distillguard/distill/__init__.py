"""Distillation, for real: harvest prompt/response pairs through a gateway, train a student.

``prompts``: prompt sources (a file, or the first user turns of ShareGPT). ``harvest``:
a concurrent, resumable client on the official ``openai`` SDK. ``train``: fine-tune or
train a student causal LM on harvested pairs, with checkpoints and a held-out loss.
"""

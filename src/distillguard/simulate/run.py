"""``run_scenario``: one scenario, replay or live, to metrics (what the CLI and bench call)."""

from __future__ import annotations

import time
from typing import Any

from distillguard.config import Settings
from distillguard.simulate import metrics
from distillguard.simulate.runner import Traffic
from distillguard.simulate.scenario import Scenario

MODES = ("replay", "live")


def run_scenario(scenario: Scenario, *, mode: str = "replay", scale: float = 1.0,
                 embeddings: bool | None = False, base_settings: Settings | None = None,
                 progress: bool = True, concurrency: int = 32,
                 embedding_cache: str | None = None) -> dict[str, Any]:
    """Generate the scenario's traffic, run it, and return its metrics (``metrics.compute``
    plus run facts: mode, scale, embeddings, wall time, requests per second).
    ``embedding_cache`` (replay) preloads embeddings saved by ``CachedEmbedder.save``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    started = time.perf_counter()
    traffic = Traffic.generate(scenario, scale)
    generated = time.perf_counter() - started
    runner: Any
    if mode == "replay":
        from distillguard.simulate.replay import ReplayRun

        runner = ReplayRun(traffic, embeddings=embeddings, base_settings=base_settings,
                           progress=progress, embedding_cache=embedding_cache)
    else:
        from distillguard.simulate.live import LiveRun

        runner = LiveRun(traffic, embeddings=embeddings, base_settings=base_settings,
                         concurrency=concurrency, progress=progress)
    try:
        t0 = time.perf_counter()
        recorder = runner.run()
        took = time.perf_counter() - t0
        risks = runner.risks()
        embeddings_on = bool(runner.settings.detection_embeddings)
    finally:
        runner.close()
    info = {
        "scenario": {"name": scenario.name, "description": scenario.description,
                     "source": scenario.source, "start": scenario.start,
                     "duration_s": scenario.duration,
                     "detection_interval_s": scenario.detection_interval,
                     "seed": scenario.seed, "held_out": scenario.held_out},
        "mode": mode, "scale": scale, "embeddings": embeddings_on,
        "run": {"generate_s": round(generated, 3), "run_s": round(took, 3),
                "requests_per_s": round(len(traffic.requests) / took, 1) if took else None},
    }
    return metrics.compute(recorder, risks, info)

"""Tokens per second the local backend serves at several numbers of concurrent clients.

Each client is an asyncio task that streams chat requests through ``LocalBackend``
directly (no HTTP), one after another, until the duration is over; requests already
started then finish. Tokens/s = completion tokens of all requests / wall time of the
level. Prints one table row per client count.

    python bench/throughput.py                      # embedded model, 1, 4 and 16 clients
    python bench/throughput.py --clients 1,4 --duration 10 --max-tokens 32
    python bench/throughput.py --model-path /path/to/hf-model --clients 64 --max-batch 64
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

from distillguard.backends.base import GenerationRequest, StreamDelta, StreamEnd
from distillguard.backends.local import LocalBackend

PROMPTS = [
    "Explain why the sky is blue.",
    "Write a short poem about autumn leaves.",
    "What are three tips for learning a new language?",
    "Describe how a bicycle works.",
    "Give me a recipe idea for a quick dinner.",
    "Why do cats purr?",
    "Summarise the water cycle in a few sentences.",
    "What is the difference between weather and climate?",
    "Tell me a fun fact about octopuses.",
    "How do I make my code easier to read?",
    "What should I pack for a weekend hiking trip?",
    "Explain photosynthesis to a ten-year-old.",
]


async def client(backend: LocalBackend, number: int, deadline: float, args: argparse.Namespace,
                 results: list[tuple[int, float, float]]) -> None:
    i = number
    while time.perf_counter() < deadline:
        request = GenerationRequest(
            kind="chat", model=backend.model_name, max_tokens=args.max_tokens,
            temperature=args.temperature, seed=i,
            messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        )
        started = time.perf_counter()
        first = None
        async for item in backend.stream(request):
            if first is None and isinstance(item, StreamDelta):
                first = time.perf_counter() - started
            if isinstance(item, StreamEnd):
                results.append((item.completion_tokens, first or 0.0,
                                time.perf_counter() - started))
        i += args.max_clients


async def level(backend: LocalBackend, clients: int, args: argparse.Namespace) -> dict:
    results: list[tuple[int, float, float]] = []
    started = time.perf_counter()
    deadline = started + args.duration
    await asyncio.gather(*(client(backend, n, deadline, args, results) for n in range(clients)))
    wall = time.perf_counter() - started
    tokens = sum(r[0] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "median_ttft_s": statistics.median(r[1] for r in results),
        "median_latency_s": statistics.median(r[2] for r in results),
    }


async def main_async(args: argparse.Namespace) -> int:
    backend = LocalBackend(args.model_path, model_name="bench", max_batch=args.max_batch,
                           threads=args.threads)
    print("loading the model...", file=sys.stderr, flush=True)
    await backend.start()
    try:
        warm = GenerationRequest(kind="chat", model="bench", max_tokens=8, temperature=0.0,
                                 messages=[{"role": "user", "content": "Hello"}])
        await backend.complete(warm)
        rows = []
        for clients in args.client_counts:
            print(f"{clients} client(s) for {args.duration:g} s...", file=sys.stderr, flush=True)
            rows.append(await level(backend, clients, args))
    finally:
        await backend.close()
    print(f"local backend throughput: max_tokens={args.max_tokens} "
          f"temperature={args.temperature:g} max_batch={args.max_batch} "
          f"threads={args.threads or 'default'}")
    header = (f"{'clients':>7} {'requests':>8} {'tokens':>7} {'wall_s':>7} {'tokens_per_s':>12} "
              f"{'median_ttft_s':>13} {'median_latency_s':>16}")
    print(header)
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['tokens']:>7} {r['wall_s']:>7.1f} "
              f"{r['tokens_per_s']:>12.1f} {r['median_ttft_s']:>13.2f} "
              f"{r['median_latency_s']:>16.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,16",
                        help="comma-separated concurrent client counts (default 1,4,16)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds each client count runs (default 30)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    parser.add_argument("--max-batch", type=int, default=16, help="rows decoded together")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--model-path", type=Path, default=None,
                        help="transformers model folder (default: the embedded model)")
    args = parser.parse_args(argv)
    try:
        args.client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--clients must be comma-separated integers, got {args.clients!r}")
    if not args.client_counts or min(args.client_counts) < 1:
        parser.error("--clients needs at least one count >= 1")
    if args.duration <= 0 or args.max_tokens < 1:
        parser.error("--duration and --max-tokens must be positive")
    args.max_clients = max(args.client_counts)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())

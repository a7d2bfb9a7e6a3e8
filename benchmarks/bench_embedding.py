"""Embedding throughput of the default encoder, and the speed-up of a cached second pass.

    python benchmarks/bench_embedding.py [--texts N] [--batch-size 32] [--device cpu] [--threads N]

Embeds the distinct state and action texts of the bundled example data set (first N)
once through a fresh on-disk cache (every text a miss), then again (every text a hit).
Beside the wall clock it reports the process's CPU time: on a machine that other jobs share,
texts per CPU-second hardly move with the load, while texts per second follow it (the load
average is printed too).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from agentfast.data import CachedEncoder, TextEncoder, load_episodes

EPISODES = Path(__file__).resolve().parents[1] / "examples" / "data" / "episodes.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    episodes = load_episodes(EPISODES).episodes
    texts = list(dict.fromkeys(t for e in episodes for t in e.states + e.actions))[: args.texts]
    encoder = TextEncoder(batch_size=args.batch_size, device=args.device)
    encoder.encode(texts[: args.batch_size], progress=False)  # warm-up: allocator, kernels
    with tempfile.TemporaryDirectory() as cache_dir:
        start, start_cpu = time.perf_counter(), time.process_time()
        CachedEncoder(encoder, cache_dir).encode(texts, progress=False)
        cold, cold_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        start = time.perf_counter()
        warm_encoder = CachedEncoder(encoder, cache_dir)  # a new run: loads the shards from disk
        warm_encoder.encode(texts, progress=False)
        warm = time.perf_counter() - start
        assert warm_encoder.hits == len(texts) and warm_encoder.misses == 0
    mean_chars = sum(map(len, texts)) / len(texts)
    print(f"encoder: {encoder.name} (dim {encoder.dim}, max_length {encoder.max_length}), "
          f"device {args.device}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"texts: {len(texts)} distinct, mean {mean_chars:.0f} characters, batch size {args.batch_size}")
    print(f"first pass (encode + write cache): {cold:.2f} s, {len(texts) / cold:.1f} texts/s; "
          f"CPU {cold_cpu:.2f} s, {len(texts) / cold_cpu:.1f} texts per CPU-second")
    print(f"cached second pass (read cache):   {warm:.3f} s, {len(texts) / warm:.0f} texts/s")
    print(f"speed-up of the cached pass: {cold / warm:.0f}x")


if __name__ == "__main__":
    main()

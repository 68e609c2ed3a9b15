"""A LoRA-tuned LocalLLM against its base on the same real warehouse states, in one run, the two
interleaved batch by batch: decisions/min of each and their ratio, and what explains a gap: completion
tokens per decision, forward passes per batch (jump-forward makes forced text nearly free, so a model's
time goes with its free choices) and milliseconds per forward pass (the per-token speed, which merged
weights must keep equal to the base's).

The tuned model is LocalLLM(base, adapter=DIR) as evaluation, backtests and live load it (the LoRA merged
into the weights). `--adapter` takes a trained adapter folder (e.g. `crypto-pipeline finetune` writes
`<warehouse>/models/finetune/adapter`); without one a LoRA with random, non-zero weights is made in seconds.
`--profile` prints cProfile's top functions of one batch of each model.

Run: CRYPTO_PIPELINE_WAREHOUSE_DIR=... .venv/bin/python bench/bench_tuned.py [--n 32] [--batch 8]
     [--adapter DIR] [--dtype auto|float32|bfloat16] [--profile] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import BenchResult, print_table  # noqa: E402
from bench.bench_dtype import agreement, bench_inputs, describe, interleaved  # noqa: E402


def profile_batch(provider: Any, states: list, top: int = 12) -> None:
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    provider.decide(states)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(top)


def run(
    quick: bool = False,
    n: int | None = None,
    batch: int = 8,
    adapter: str | None = None,
    dtype: str | None = None,
    profile: bool = False,
) -> list[BenchResult]:
    from crypto_pipeline.llm.local import LocalLLM

    n = n or (4 if quick else 32)
    batch = min(batch, n)
    states, folder, adapter_dir = bench_inputs(n, adapter or "random")
    providers = {
        "base": LocalLLM(folder, dtype=dtype, batch_size=batch),
        "tuned": LocalLLM(folder, adapter=adapter_dir, dtype=dtype, batch_size=batch),
    }
    print(f"{describe(states)} | batch {batch} | load average {os.getloadavg()[0]:.1f}", flush=True)
    figures = interleaved(providers, states, batch)
    tuned = providers["tuned"]
    leftover = [name for name, _ in tuned.model.named_modules() if "lora" in name.lower()]
    weights = {p.dtype for p in tuned.model.parameters()}
    print(
        f"tuned model: {type(tuned.model).__name__}, LoRA modules left after merging: {len(leftover)}, "
        f"weights {sorted(map(str, weights))} (base {providers['base'].dtype})"
    )
    for name, f in figures.items():
        print(
            f"{name:6} {f['per_min']:6.1f} decisions/min  valid {f['valid']}/{n}  completion tokens "
            f"{f['completion_tokens']:.1f}  forward passes {f['forwards']} (decoding steps {f['ms_per_step']:.0f} ms, "
            f"prompts {f['ms_per_prefill']:.0f} ms)"
        )
    base, tune = figures["base"], figures["tuned"]
    same_action, _ = agreement(base["decisions"], tune["decisions"])
    ratio = tune["per_min"] / base["per_min"]
    per_step = tune["ms_per_step"] / base["ms_per_step"]
    load = os.getloadavg()[0]
    print(
        f"tuned/base: {ratio:.2f}x decisions/min, {tune['forwards'] / max(1, base['forwards']):.2f}x forward "
        f"passes, {per_step:.2f}x ms per decoding step; actions the same on {same_action}/{n}; "
        f"load average {load:.1f}"
    )
    if profile:
        for name, provider in providers.items():
            print(f"--- cProfile, {name}, one batch of {batch}")
            profile_batch(provider, states[:batch])
    return [
        BenchResult(
            f"tuned LocalLLM (LoRA merged), {n} warehouse states, batch {batch}",
            tune["per_min"],
            "decisions/min",
            "its base, same states, interleaved",
            base["per_min"],
            "~1x; per decoding step 1x",
            note=(
                f"ms per decoding step {tune['ms_per_step']:.0f} vs {base['ms_per_step']:.0f}; forward passes "
                f"{tune['forwards']} vs {base['forwards']}; completion tokens {tune['completion_tokens']:.0f} vs "
                f"{base['completion_tokens']:.0f}; load {load:.1f}"
            ),
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4 states")
    parser.add_argument("--n", type=int, default=None, help="states (default 32)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (evaluation's is 8)")
    parser.add_argument("--adapter", default=None, help="a trained LoRA folder (default: a random LoRA)")
    parser.add_argument("--dtype", default=None, help="auto | float32 | bfloat16 (default: the setting)")
    parser.add_argument("--profile", action="store_true", help="cProfile one batch of each")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default; 1 on a crowded machine)"
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = run(args.quick, args.n, args.batch, args.adapter, args.dtype, args.profile)
    print_table(results)


if __name__ == "__main__":
    main()

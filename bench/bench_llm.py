"""LocalLLM with SmolLM2-135M on this CPU: batched + prefix-cached + constrained decisions against the
naive agent loop (one unconstrained `model.generate` per state, same prompts, same run); parse-failure
rates with and without constraints; prompt tokens per decision; and the share of the machine's measured
matmul throughput that inference reaches.

Run: .venv/bin/python bench/bench_llm.py [--quick]
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import BenchResult, print_table  # noqa: E402

SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT", "DOGE/USDT", "AVAX/USDT", "LINK/USDT", "NEAR/USDT")


def real_states(n: int) -> list:
    """`n` market states from the recorded 2024 data, spread over symbols and days (no look-ahead)."""
    from crypto_pipeline.state import build_market_state_from_recorded

    start = datetime(2024, 6, 1, 12, tzinfo=UTC)
    return [
        build_market_state_from_recorded(SYMBOLS[i % len(SYMBOLS)], start + timedelta(hours=31 * i))
        for i in range(n)
    ]


def matmul_gflops(size: int = 1024, repeat: int = 5) -> float:
    """float32 matmul throughput of this machine, the ceiling for dense inference."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def run(quick: bool = False) -> list[BenchResult]:
    import torch
    from rich.progress import Progress

    from crypto_pipeline.config import get_settings
    from crypto_pipeline.llm.base_model import ensure_base_model
    from crypto_pipeline.llm.decision import parse_decision
    from crypto_pipeline.llm.local import LocalLLM
    from crypto_pipeline.llm.prompts import build_user_prompt

    n = 4 if quick else 16
    states = real_states(n)
    prompts = [build_user_prompt(s) for s in states]
    folder = ensure_base_model(get_settings().models_dir)
    ours = LocalLLM(folder, constrained=True, batch_size=n).load()
    # The baseline shares the loaded weights: same model, same prompts, only the generation strategy differs.
    naive = LocalLLM.from_objects(ours.model, ours.tokenizer, model_id=str(folder), constrained=False)
    params = sum(p.numel() for p in ours.model.parameters())

    ours.decide(states[:1])  # warm-up: builds the prefix cache and the grammar matcher once
    t0 = time.perf_counter()
    decisions = ours.decide(states)
    ours_s = time.perf_counter() - t0

    naive_texts: list[str] = []
    naive_tokens = 0
    with Progress(transient=True) as progress:
        task = progress.add_task("naive loop (one generate per state)", total=n)
        t0 = time.perf_counter()
        for prompt in prompts:
            completion = naive.naive_complete(prompt)
            naive_texts.append(completion.text)
            naive_tokens += completion.prompt_tokens + completion.completion_tokens
            progress.advance(task)
        naive_s = time.perf_counter() - t0

    ours_rate, naive_rate = 60 * n / ours_s, 60 * n / naive_s  # per minute: a 135M model on 2 cores is slow
    fail_constrained = 100 * sum(not d.valid for d in decisions) / n
    fail_free = 100 * sum(not parse_decision(t).valid for t in naive_texts) / n
    prefix_len = len(ours._prefix_ids or [])
    full_prompt = sum(d.prompt_tokens or 0 for d in decisions) / n
    computed_prompt = full_prompt - prefix_len  # the system prompt's KV cache is computed once, not per state
    # Dense-inference FLOPs ~ 2 x parameters x tokens processed (prompt tokens computed + generated tokens).
    ours_tokens = sum((d.prompt_tokens or 0) - prefix_len + (d.completion_tokens or 0) for d in decisions)
    ours_gflops = 2 * params * ours_tokens / ours_s / 1e9
    naive_gflops = 2 * params * naive_tokens / naive_s / 1e9
    peak = matmul_gflops()
    threads = torch.get_num_threads()

    return [
        BenchResult(
            "LocalLLM decisions/min, SmolLM2-135M (batched, prefix KV cache, constrained)",
            ours_rate,
            "decisions/min",
            "naive loop: one unconstrained generate per state",
            naive_rate,
            ">= 5x reference",
            note=(
                f"{ours_rate / 60:.3f} vs {naive_rate / 60:.3f} decisions/s; {n} real states, batch {n}, "
                f"{threads} threads, load avg {os.getloadavg()[0]:.1f}; naive max_new_tokens 160"
            ),
        ),
        BenchResult(
            "parse failures, constrained",
            fail_constrained,
            "%",
            "unconstrained (naive loop, same prompts)",
            fail_free,
            "0 %",
            higher_is_better=False,
            note=f"{n} real states",
        ),
        BenchResult(
            "prompt tokens computed per decision",
            computed_prompt,
            "tokens",
            "full prompt tokens per decision",
            full_prompt,
            "< reference (system prompt cached)",
            higher_is_better=False,
            note=f"shared system prefix {prefix_len} tokens computed once",
        ),
        BenchResult(
            "inference throughput (2 x params x tokens / s)",
            ours_gflops,
            "GFLOP/s",
            "torch float32 matmul 1024^3, same run",
            peak,
            "report",
            note=f"naive loop reaches {naive_gflops:.1f} GFLOP/s ({naive_gflops / peak:.0%} of matmul)",
        ),
    ]


if __name__ == "__main__":
    print_table(run(quick="--quick" in sys.argv))

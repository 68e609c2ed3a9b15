"""LocalLLM with SmolLM2-135M on this CPU: batched + prefix-cached + constrained decisions against the
naive agent loop (one unconstrained `model.generate` per state, same prompts, same run); each speed-up
step (float32 greedy under the grammar -> jump-forward -> bfloat16, or int8) with how many of the decisions differ
from the float32 greedy path; parse-failure rates with and without constraints; prompt tokens per
decision; the share of the machine's measured matmul throughput that inference reaches; and, when the
extra `crypto-pipeline[llama]` is installed, llama.cpp on the same GGUF and prompts with the grammar.

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
    from crypto_pipeline.state.build import build_market_state_from_recorded

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


def _content(d) -> tuple:  # noqa: ANN001 - a TradeDecision
    """What a decision says (the action and its numbers): two paths agree when these are equal."""
    return (d.action, d.confidence, d.position_size_pct, d.stop_loss_pct, d.take_profit_pct)


def _timed(provider, states: list) -> tuple[list, float]:  # noqa: ANN001 - a DecisionProvider
    provider.decide(states[:1])  # warm-up: prefix cache, grammar matcher, llama.cpp context
    t0 = time.perf_counter()
    decisions = provider.decide(states)
    return decisions, time.perf_counter() - t0


def run(quick: bool = False) -> list[BenchResult]:
    import torch
    from rich.progress import Progress

    from crypto_pipeline.config import get_settings
    from crypto_pipeline.llm.base_model import ensure_base_model
    from crypto_pipeline.llm.decision import parse_decision
    from crypto_pipeline.llm.llama_cpp import LlamaCpp, llama_cpp_available
    from crypto_pipeline.llm.local import LocalLLM
    from crypto_pipeline.llm.prompts import build_user_prompt

    n = 4 if quick else 16
    states = real_states(n)
    prompts = [build_user_prompt(s) for s in states]
    folder = ensure_base_model(get_settings().models_dir)
    load_before = os.getloadavg()[0]
    # The float32 greedy path (transformers generate under the grammar): the decisions of reference.
    greedy = LocalLLM(folder, constrained=True, batch_size=n, jump_forward=False).load()
    # The steps, each on top of the one before: jump-forward over the grammar's fixed text (verified by the
    # model's own logits, so the same tokens), then bfloat16 weights. int8 is the alternative to bfloat16.
    jump = LocalLLM.from_objects(
        greedy.model, greedy.tokenizer, model_id=str(folder), batch_size=n, jump_forward=True
    )
    ours = LocalLLM(folder, constrained=True, batch_size=n, jump_forward=True, dtype="bfloat16").load()
    int8 = LocalLLM(folder, constrained=True, batch_size=n, jump_forward=True, quantize="int8").load()
    # The naive baseline shares the float32 weights: same model, same prompts, only the strategy differs.
    naive = LocalLLM.from_objects(greedy.model, greedy.tokenizer, model_id=str(folder), constrained=False)
    params = sum(p.numel() for p in greedy.model.parameters())
    peak = matmul_gflops()

    ref_decisions, greedy_s = _timed(greedy, states)
    jump_decisions, jump_s = _timed(jump, states)
    decisions, ours_s = _timed(ours, states)
    int8_decisions, int8_s = _timed(int8, states)
    llama = None
    if llama_cpp_available():
        llama = LlamaCpp(n_threads=torch.get_num_threads())
        llama_decisions, llama_s = _timed(llama, states)

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

    def rate(seconds: float) -> float:
        return 60 * n / seconds  # per minute: a 135M model on 2 cores is slow

    def differ(ds: list) -> int:
        return sum(_content(a) != _content(b) for a, b in zip(ref_decisions, ds, strict=True))

    ours_rate, naive_rate, greedy_rate, jump_rate = rate(ours_s), rate(naive_s), rate(greedy_s), rate(jump_s)
    fail_constrained = 100 * sum(not d.valid for d in decisions) / n
    fail_free = 100 * sum(not parse_decision(t).valid for t in naive_texts) / n
    prefix_len = len(ours._prefix_ids or [])
    full_prompt = sum(d.prompt_tokens or 0 for d in decisions) / n
    computed_prompt = full_prompt - prefix_len  # the system prompt's KV cache is computed once, not per state
    # Dense-inference FLOPs ~ 2 x parameters x tokens processed (prompt tokens computed + generated tokens);
    # the same tokens for every constrained path, so the shares compare like for like.
    tokens = sum((d.prompt_tokens or 0) - prefix_len + (d.completion_tokens or 0) for d in ref_decisions)
    ours_gflops = 2 * params * tokens / ours_s / 1e9
    greedy_gflops = 2 * params * tokens / greedy_s / 1e9
    naive_gflops = 2 * params * naive_tokens / naive_s / 1e9
    threads = torch.get_num_threads()
    load = f"load avg {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other agents)"

    results = [
        BenchResult(
            "LocalLLM decisions/min, SmolLM2-135M (batched, prefix KV cache, grammar, jump-forward, bfloat16)",
            ours_rate,
            "decisions/min",
            "naive loop: one unconstrained generate per state",
            naive_rate,
            ">= 120 decisions/min; >= 5x reference",
            note=f"{n} real states, batch {n}, {threads} threads, {load}; naive max_new_tokens 160",
        ),
        BenchResult(
            "step 1: float32 greedy under the grammar (transformers generate)",
            greedy_rate,
            "decisions/min",
            "naive loop",
            naive_rate,
            "the reference decisions",
            note=f"{sum(d.valid for d in ref_decisions)}/{n} valid",
        ),
        BenchResult(
            "step 2: + jump-forward over the grammar's fixed text",
            jump_rate,
            "decisions/min",
            "step 1, float32 greedy",
            greedy_rate,
            "> 1x",
            note=(
                f"{sum(d.valid for d in jump_decisions)}/{n} valid; {differ(jump_decisions)}/{n} decisions "
                "differ from float32 greedy"
            ),
        ),
        BenchResult(
            "step 3: + bfloat16 weights (the first row)",
            ours_rate,
            "decisions/min",
            "step 2, jump-forward float32",
            jump_rate,
            "> 1x",
            note=(
                f"{sum(d.valid for d in decisions)}/{n} valid; {differ(decisions)}/{n} decisions differ "
                f"from float32 greedy ({sum(a.action != b.action for a, b in zip(ref_decisions, decisions, strict=True))} "
                "in their action)"
            ),
        ),
        BenchResult(
            "alternative step 3: + dynamic int8 linears instead of bfloat16",
            rate(int8_s),
            "decisions/min",
            "step 2, jump-forward float32",
            jump_rate,
            "report",
            note=(
                f"{sum(d.valid for d in int8_decisions)}/{n} valid; {differ(int8_decisions)}/{n} decisions differ "
                "from float32 greedy"
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
            ">= 50% of matmul",
            note=(
                f"float32 greedy {greedy_gflops:.1f} GFLOP/s ({greedy_gflops / peak:.0%}); naive loop "
                f"{naive_gflops:.1f} GFLOP/s ({naive_gflops / peak:.0%})"
            ),
        ),
    ]
    if llama is not None:
        llama_rate = rate(llama_s)
        per = lambda ds, f: sum(getattr(d, f) or 0 for d in ds) / n  # noqa: E731
        results += [
            BenchResult(
                "llama.cpp decisions/min (llama-cpp-python, Q4_1 GGUF, GBNF grammar, one state at a time)",
                llama_rate,
                "decisions/min",
                "LocalLLM jump-forward + bfloat16",
                ours_rate,
                "report",
                note=(
                    f"{sum(d.valid for d in llama_decisions)}/{n} valid; {per(llama_decisions, 'prompt_tokens'):.0f} "
                    f"prompt + {per(llama_decisions, 'completion_tokens'):.0f} completion tokens per decision "
                    f"(LocalLLM {per(decisions, 'prompt_tokens'):.0f} + {per(decisions, 'completion_tokens'):.0f}); "
                    f"{differ(llama_decisions)}/{n} decisions differ from float32 greedy"
                ),
            ),
            *(
                BenchResult(
                    f"{label} vs llama.cpp",
                    value,
                    "decisions/min",
                    "llama.cpp, same GGUF, same prompts, same run",
                    llama_rate,
                    "report",
                )
                for label, value in (
                    ("LocalLLM jump-forward + bfloat16", ours_rate),
                    ("LocalLLM jump-forward float32 (same decisions)", jump_rate),
                    ("LocalLLM float32 greedy", greedy_rate),
                    ("naive loop", naive_rate),
                )
            ),
        ]
    return results


if __name__ == "__main__":
    print_table(run(quick="--quick" in sys.argv))

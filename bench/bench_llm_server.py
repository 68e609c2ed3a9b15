"""llama.cpp's OpenAI-compatible server (llama-cpp-python's `python -m llama_cpp.server`, on the embedded
SmolLM2-135M Q4_1 GGUF) asked by `OpenAICompatible` on the real states of `bench/bench_llm.py`, in one run,
under each output form: with the decision's schema (`auto`, which the server answers as json_object +
schema), with the decision grammar (`gbnf`), and without any (`json`: JSON mode only; `text`). Prints the
valid rate and decisions/min of each, against JSON mode and against the in-process `LlamaCpp` provider
with the same grammar on the same GGUF and threads (and how many decisions the two paths share, with the
server's default repeat penalty and with the in-process one). Needs the extra `crypto-pipeline[llama]`.

Run: .venv/bin/python bench/bench_llm_server.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import BenchResult, print_table  # noqa: E402
from bench.bench_llm import real_states  # noqa: E402

# The output forms compared, strongest first; `auto` is what a user gets by default.
MODES = ("auto", "gbnf", "json", "text")


def _timed(provider, states: list) -> tuple[list, float]:  # noqa: ANN001 - a DecisionProvider
    """Decisions and seconds; one warm-up state first (system prompt in the KV cache, step-downs done)."""
    provider.decide(states[:1])
    t0 = time.perf_counter()
    decisions = provider.decide(states)
    return decisions, time.perf_counter() - t0


def _content(d) -> tuple:  # noqa: ANN001 - a TradeDecision
    return (d.action, d.confidence, d.position_size_pct, d.stop_loss_pct, d.take_profit_pct)


def run(quick: bool = False, threads: int = 1) -> list[BenchResult]:
    from crypto_pipeline.llm.llama_cpp import EXTRA_HINT, LlamaCpp, llama_cpp_available
    from crypto_pipeline.llm.llama_server import llama_server
    from crypto_pipeline.llm.openai_compat import OpenAICompatible

    if not llama_cpp_available():
        print(f"skipped: the optional extra is not installed: {EXTRA_HINT}")
        return []
    n = 4 if quick else 16
    states = real_states(n)
    load_before = os.getloadavg()[0]
    log = Path(tempfile.gettempdir()) / "bench_llm_server.log"
    print(f"server stderr: {log}")
    by_mode: dict[str, tuple[list, float]] = {}
    with llama_server(n_threads=threads, log_path=log) as url:
        for mode in MODES:
            with OpenAICompatible(
                url, "smollm2", api_key_env=None, schema_mode=mode, timeout_s=600, concurrency=1
            ) as provider:
                by_mode[mode] = _timed(provider, states)
        # The server's repeat penalty defaults to 1.1, the in-process path's to 1.0: set it to compare.
        with OpenAICompatible(
            url,
            "smollm2",
            api_key_env=None,
            schema_mode="gbnf",
            timeout_s=600,
            concurrency=1,
            extra_body={"repeat_penalty": 1.0},
        ) as provider:
            served_same, _ = _timed(provider, states)
    in_process, in_process_s = _timed(LlamaCpp(n_threads=threads), states)

    def rate(seconds: float) -> float:
        return 60 * n / seconds

    def valid(mode: str) -> float:
        decisions = by_mode[mode][0]
        return 100 * sum(d.valid for d in decisions) / n

    print(f"\n{n} real states, llama_cpp.server with {threads} thread(s); load average {load_before:.2f}")
    for mode in MODES:
        decisions, seconds = by_mode[mode]
        modes = sorted({d.output_mode or "-" for d in decisions})
        tokens = sum(d.completion_tokens or 0 for d in decisions) / n
        print(
            f"  {mode:5s} -> sent as {','.join(modes):12s} valid {sum(d.valid for d in decisions):2d}/{n}  "
            f"{rate(seconds):5.1f} decisions/min  {tokens:5.1f} completion tokens/decision"
        )
        for d in [d for d in decisions if not d.valid][:2]:
            print(f"      invalid: {d.error} | {(d.raw_text or '')[:100]!r}")
    tokens = sum(d.completion_tokens or 0 for d in in_process) / n
    print(
        f"  in-process LlamaCpp (gbnf): valid {sum(d.valid for d in in_process):2d}/{n}  "
        f"{rate(in_process_s):5.1f} decisions/min  {tokens:5.1f} completion tokens/decision"
    )
    for label, served in (("server default repeat_penalty 1.1", by_mode["gbnf"][0]), ("1.0", served_same)):
        same = sum(_content(a) == _content(b) for a, b in zip(served, in_process, strict=True))
        print(f"  server gbnf ({label}) vs in-process LlamaCpp: {same}/{n} decisions identical")
    note = f"{n} real states, 1-thread server, machine shared with other agents (load {load_before:.1f})"
    json_rate = valid("json")
    return [
        BenchResult(
            "llama.cpp server valid rate, with the schema (auto)",
            valid("auto"),
            "% valid",
            "JSON mode without the schema",
            json_rate,
            "100% valid",
            note=note,
        ),
        BenchResult(
            "llama.cpp server valid rate, decision grammar (gbnf)",
            valid("gbnf"),
            "% valid",
            "JSON mode without the schema",
            json_rate,
            "100% valid",
            note=note,
        ),
        BenchResult(
            "llama.cpp server valid rate, plain text",
            valid("text"),
            "% valid",
            "JSON mode without the schema",
            json_rate,
            "(reference)",
            note=note,
        ),
        BenchResult(
            "llama.cpp server decisions/min, with the schema (auto)",
            rate(by_mode["auto"][1]),
            "decisions/min",
            "in-process LlamaCpp, grammar",
            rate(in_process_s),
            "(overhead of HTTP + server)",
            note=note,
        ),
        BenchResult(
            "llama.cpp server decisions/min, decision grammar (gbnf)",
            rate(by_mode["gbnf"][1]),
            "decisions/min",
            "in-process LlamaCpp, grammar",
            rate(in_process_s),
            "(overhead of HTTP + server)",
            note=note,
        ),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 states instead of 16")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (server and in-process)")
    args = parser.parse_args()
    print_table(run(quick=args.quick, threads=args.threads))

"""LocalLLM in bfloat16 against float32 on real states of the warehouse: how many actions agree, how many
decisions agree whole (action and numbers), and the decisions/min of each, measured in one process with
the two formats interleaved batch by batch (the machine is shared: both see the same load).

The states are the warehouse's stored `market_states` (BTC/ETH/SOL 2024), picked evenly over the whole
table: about 62 hours apart, so they cover every symbol, every hour of the day and every month. This is the
figure `Settings.llm_dtype`'s default rests on (docs/llm.md).

bfloat16 is measured where the CPU computes it natively (AVX512-BF16/AMX). On a CPU without them torch
emulates bfloat16 matmuls at about 0.3 GFLOP/s (40x slower than float32 on the AVX2 EPYC of docs/llm.md):
there the agreement is measured with the model in bfloat16 (weights, activations, every other op) and its
linear layers computed as oneDNN computes them on AVX512-BF16 (bfloat16 inputs and weights, float32
accumulation, bfloat16 output) by float32 kernels; `--check K` runs the real emulated bfloat16 path on the
first K states too and counts where its text differs from that computation, and times it; `--real` measures
the agreement with torch's own (emulated) bfloat16 path instead, at its speed.

`--adapter DIR` runs the same comparison on a LoRA-tuned model (the adapter merged, as LocalLLM serves it);
`--adapter random` makes a LoRA with random, non-zero weights on the last 4 layers (bench_tuned.py).

Run: CRYPTO_PIPELINE_WAREHOUSE_DIR=... .venv/bin/python bench/bench_dtype.py [--n 96] [--batch 16]
     [--adapter DIR|random] [--check 4] [--real] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import BenchResult, print_table  # noqa: E402


def warehouse_states(n: int) -> list:
    """`n` stored market states spread evenly over the warehouse's `market_states` (every symbol, hour of
    day and month); rows whose state cannot be built are skipped for the next one."""
    from crypto_pipeline.config import get_settings
    from crypto_pipeline.state.build import state_from_row
    from crypto_pipeline.warehouse import Warehouse

    frame = Warehouse(get_settings().warehouse_dir).read("market_states").sort("at", "symbol")
    frame = frame.drop("prompt", "prompt_version", "prompt_hash", strict=False)
    if frame.height < n:
        raise SystemExit(
            f"the warehouse holds {frame.height} market states, fewer than {n}: materialize them"
        )
    rows = frame.to_dicts()
    step = len(rows) / n
    states = []
    for i in range(n):
        for row in rows[int(i * step) : int((i + 1) * step)]:
            try:
                states.append(state_from_row(row))
                break
            except (ValueError, TypeError, KeyError):
                continue
    return states


def describe(states: list) -> str:
    symbols = sorted({s.symbol for s in states})
    hours = len({s.at.hour for s in states})
    return (
        f"{len(states)} states: {', '.join(symbols)}; {hours} hours of day; "
        f"{min(s.at for s in states):%Y-%m-%d} .. {max(s.at for s in states):%Y-%m-%d}"
    )


PREFILL_TOKENS = 64  # a forward pass over more tokens per row reads a prompt; fewer: a decoding step


def forward_timer(model: Any) -> Callable[[], dict[str, float]]:
    """Times the model's forward passes from now on: their count, and the mean milliseconds of the prompt
    passes and of the decoding steps (one per free choice of a batch, jump-forward's draft riding along)."""
    calls: list[tuple[int, float]] = []
    started: list[float] = []

    def before(_module: Any, args: Any, kwargs: Any) -> None:
        started.append(time.perf_counter())

    def after(_module: Any, args: Any, kwargs: Any, _output: Any) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        calls.append((int(ids.shape[1]) if ids is not None else 0, time.perf_counter() - started.pop()))

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.register_forward_hook(after, with_kwargs=True)

    def stats() -> dict[str, float]:
        prefill = [t for width, t in calls if width > PREFILL_TOKENS]
        steps = [t for width, t in calls if width <= PREFILL_TOKENS]
        return {
            "forwards": len(calls),
            "steps": len(steps),
            "ms_per_step": 1e3 * sum(steps) / max(1, len(steps)),
            "ms_per_prefill": 1e3 * sum(prefill) / max(1, len(prefill)),
        }

    return stats


def interleaved(providers: dict[str, Any], states: list, batch: int) -> dict[str, dict[str, Any]]:
    """Each provider decides every batch of `states`, batch by batch in turn (so load drifts hit all
    alike): its decisions, wall seconds, forward passes and completion tokens."""
    out: dict[str, dict[str, Any]] = {}
    timers = {}
    for name, provider in providers.items():
        provider.load()
        provider.decide(states[:1])  # warm-up: the system prompt's cache, the grammar, first-call costs
        timers[name] = forward_timer(provider.model)
        out[name] = {"decisions": [], "seconds": 0.0}
    for start in range(0, len(states), batch):
        chunk = states[start : start + batch]
        for name, provider in providers.items():
            t0 = time.perf_counter()
            out[name]["decisions"].extend(provider.decide(chunk))
            out[name]["seconds"] += time.perf_counter() - t0
    for name, figures in out.items():
        decisions = figures["decisions"]
        figures["per_min"] = 60 * len(decisions) / figures["seconds"]
        figures |= timers[name]()
        figures["completion_tokens"] = sum(d.completion_tokens or 0 for d in decisions) / len(decisions)
        figures["valid"] = sum(d.valid for d in decisions)
    return out


def content(d: Any) -> tuple:
    """What a decision says: the action and its numbers."""
    return (d.action, d.confidence, d.position_size_pct, d.stop_loss_pct, d.take_profit_pct)


def agreement(a: list, b: list) -> tuple[int, int]:
    """(actions that agree, decisions that agree whole) between two runs on the same states."""
    same_action = sum(x.action == y.action for x, y in zip(a, b, strict=True))
    same = sum(content(x) == content(y) for x, y in zip(a, b, strict=True))
    return same_action, same


def emulate_bf16_matmuls(model: Any) -> Any:
    """The bfloat16 model's linear layers computed as oneDNN's bfloat16 matmul computes them (bfloat16
    inputs and weights, float32 accumulation, a bfloat16 result), by float32 kernels: the numbers of a
    CPU with AVX512-BF16/AMX at float32's speed on one without (every other op stays bfloat16)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.bfloat16:
            weight = module.weight.detach().float()
            bias = None if module.bias is None else module.bias.detach().float()

            def forward(x: Any, weight: Any = weight, bias: Any = bias) -> Any:
                return torch.nn.functional.linear(x.float(), weight, bias).to(torch.bfloat16)

            module.forward = forward
    return model


def random_lora(base: Path, out: Path, *, layers: int = 4, seed: int = 0) -> Path:
    """A LoRA adapter on the last `layers` layers with random, non-zero A and B (peft leaves B at zero):
    a tuned model for timing, built in seconds, whose merged weights really differ from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    n = model.config.num_hidden_layers
    config = LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=list(range(n - layers, n)),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    peft_model.save_pretrained(str(out))
    return out


def resolve_adapter_arg(adapter: str | None, base: Path) -> Path | None:
    if not adapter:
        return None
    if adapter == "random":
        import tempfile

        return random_lora(base, Path(tempfile.mkdtemp(prefix="bench-lora-")))
    return Path(adapter)


def bench_inputs(n: int, adapter: str | None) -> tuple[list, Path, Path | None]:
    """What bench_dtype and bench_tuned compare on: `n` warehouse states, the embedded base model's folder
    and the adapter `adapter` names (`resolve_adapter_arg`)."""
    from crypto_pipeline.config import get_settings
    from crypto_pipeline.llm.base_model import ensure_base_model

    states = warehouse_states(n)
    folder = ensure_base_model(get_settings().models_dir)
    return states, folder, resolve_adapter_arg(adapter, folder)


def run(
    quick: bool = False,
    n: int | None = None,
    batch: int = 16,
    adapter: str | None = None,
    check: int = 4,
    real: bool = False,
) -> list[BenchResult]:
    from crypto_pipeline.llm.local import LocalLLM, bf16_native

    n = n or (6 if quick else 96)
    batch = min(batch, n)
    states, folder, adapter_dir = bench_inputs(n, adapter)
    native, where = bf16_native()
    print(describe(states), f"| batch {batch} | {where} | load average {os.getloadavg()[0]:.1f}", flush=True)
    providers = {
        dtype: LocalLLM(folder, adapter=adapter_dir, dtype=dtype, batch_size=batch)
        for dtype in ("float32", "bfloat16")
    }
    computed = not native and not real
    if computed:  # bfloat16's numbers at float32's speed; torch's own emulated path is checked below
        emulate_bf16_matmuls(providers["bfloat16"].load().model)
    figures = interleaved(providers, states, batch)
    f32, bf16 = figures["float32"], figures["bfloat16"]
    same_action, same = agreement(f32["decisions"], bf16["decisions"])
    load = os.getloadavg()[0]
    model = f"{folder.name}" + (f" + LoRA {adapter_dir}" if adapter_dir else "")
    results = []
    if computed and check:
        real = LocalLLM(folder, adapter=adapter_dir, dtype="bfloat16", batch_size=min(batch, check))
        both = interleaved(
            {"float32": providers["float32"], "bfloat16 emulated": real}, states[:check], batch
        )
        differ = sum(
            a.raw_text != b.raw_text
            for a, b in zip(both["bfloat16 emulated"]["decisions"], bf16["decisions"][:check], strict=True)
        )
        slow = both["bfloat16 emulated"]["per_min"] / both["float32"]["per_min"]
        print(
            f"torch's emulated bfloat16 on {check} states: {both['bfloat16 emulated']['per_min']:.1f} decisions/min, "
            f"{slow:.3f}x float32's {both['float32']['per_min']:.1f}; its text differs from the oneDNN-style "
            f"computation on {differ}/{check}"
        )
        results.append(
            BenchResult(
                f"LocalLLM bfloat16 where the CPU lacks it (torch's emulation), {check} states",
                both["bfloat16 emulated"]["per_min"],
                "decisions/min",
                "float32 (interleaved, same run)",
                both["float32"]["per_min"],
                "why 'auto' is float32 here",
                note=f"{where}; text differs from the computed bfloat16 on {differ}/{check}",
            )
        )
    for name, f in figures.items():
        print(
            f"{name:9} {f['per_min']:6.1f} decisions/min  valid {f['valid']}/{n}  "
            f"completion tokens {f['completion_tokens']:.1f}  forward passes {f['forwards']} (decoding steps "
            f"{f['ms_per_step']:.0f} ms, prompts {f['ms_per_prefill']:.0f} ms)"
        )
    print(
        f"{model}: actions agree on {same_action}/{n} ({100 * same_action / n:.1f} %), whole decisions on "
        f"{same}/{n}; bfloat16/float32 speed {bf16['per_min'] / f32['per_min']:.2f}x; load average {load:.1f}"
    )
    return [
        *results,
        BenchResult(
            f"bfloat16 vs float32 actions agreeing, {n} warehouse states",
            100 * same_action / n,
            "%",
            "whole decisions agreeing",
            100 * same / n,
            ">= 97 % for bfloat16 to be the default where native",
            note=f"{model}; {where}",
        ),
        BenchResult(
            f"LocalLLM bfloat16, {n} warehouse states, batch {batch}",
            bf16["per_min"],
            "decisions/min",
            "float32 (interleaved, same run)",
            f32["per_min"],
            "> 1x where bfloat16 is native",
            note=f"load average {load:.1f}; {where}"
            + ("; linear layers by float32 kernels" if computed else ""),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="6 states")
    parser.add_argument("--n", type=int, default=None, help="states (default 96)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--adapter", default=None, help="a LoRA folder, or 'random'")
    parser.add_argument("--check", type=int, default=4, help="states for torch's own emulated bfloat16")
    parser.add_argument("--real", action="store_true", help="torch's own bfloat16 path even where emulated")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default; 1 on a crowded machine)"
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print_table(run(args.quick, args.n, args.batch, args.adapter, args.check, args.real))


if __name__ == "__main__":
    main()

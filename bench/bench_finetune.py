"""Fine-tuning throughput: QLoRA 4-bit NF4 against plain float LoRA on the same examples in the same run
(training tokens/s, samples/s, peak memory), and decisions/min of the fine-tuned model with the adapter
merged against unmerged. Each training mode runs in its own process so its peak memory is its own.
Also the cached path (frozen_layers.py: the lower layers computed once, LoRA steps on the top 4 layers)
against trl's SFTTrainer with the same LoRA on the same examples and batch size, in one process.

    .venv/bin/python bench/bench_finetune.py [--quick] [--base FOLDER_OR_HUB_ID] [--steps N] [--data DIR]

On a CUDA machine it trains and decides on the GPU (peak memory is then the GPU's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO_ROOT, BenchResult, print_table  # noqa: E402


def _arg(name: str, default: str | None) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def _dataset(out: Path, examples: int) -> Path:
    """A real sft_dataset from the recorded 2024 BTC bars (Feb-Mar), saved as Parquet for the workers; or,
    with `--data DIR`, the one `bench/finetune_cuda.py --export DIR` wrote (a machine without the recordings)."""
    exported = _arg("--data", None)
    if exported is not None:
        import polars as pl

        pl.read_parquet(Path(exported) / "market_states.parquet").write_parquet(out / "states.parquet")
        return Path(exported) / "sft_dataset.parquet"
    from tests.training.conftest import SMALL_CONFIG, btc_states_frame

    states, bars = btc_states_frame()
    from crypto_pipeline.training.dataset import build_sft_dataset

    frame = build_sft_dataset(states, bars, SMALL_CONFIG).frame
    path = out / "sft.parquet"
    frame.write_parquet(path)
    states.write_parquet(out / "states.parquet")
    return path


def _train_worker(data: str, out: str, base: str | None, four_bit: bool, steps: int) -> None:
    """Run in a child process: one fine-tune, print its figures as JSON on the last line."""
    import resource

    import polars as pl
    import torch

    from crypto_pipeline.config import get_settings
    from crypto_pipeline.training.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(
        base_model=base, load_in_4bit=four_bit, max_steps=steps, batch_size=2, warmup_steps=0,
        max_train_examples=max(12, steps * 2), save_steps=10_000,
    )  # fmt: skip
    result = finetune(pl.read_parquet(data), config, Path(out), models_dir=get_settings().models_dir)
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    print(json.dumps({
        "tokens_per_s": result.tokens_per_second, "samples_per_s": result.samples_per_second,
        "peak_mb": peak_mb, "adapter": str(result.adapter_dir), "base": result.base_model,
    }))  # fmt: skip


def _in_child(worker: str, *args: object) -> dict:
    """`worker(*args)` of this module in a child process (so its peak memory is its own); the JSON it
    prints on its last line."""
    code = (
        f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); from bench.bench_finetune import {worker}; "
        f"{worker}(*{args!r})"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _train(data: Path, out: Path, base: str | None, four_bit: bool, steps: int) -> dict:
    return _in_child("_train_worker", str(data), str(out), base, four_bit, steps)


def _cached_vs_sft_worker(data: str, out: str, base: str | None, examples: int, batch: int) -> None:
    """Run in a child process: one epoch over the same `examples` rows, batch `batch`, float LoRA on the last
    4 layers, by the cached path (the lower layers' pass once, then the top layers' steps) and by SFTTrainer
    (`finetune`); print the seconds of each as JSON on the last line."""
    import math

    import polars as pl
    import torch
    from peft import get_peft_model
    from transformers import set_seed

    from crypto_pipeline.config import get_settings
    from crypto_pipeline.llm.prompts import SYSTEM_PROMPT
    from crypto_pipeline.training.finetune import (
        FinetuneConfig,
        finetune,
        load_base,
        lora_config,
        resolve_base_model,
        training_rows,
    )
    from crypto_pipeline.training.frozen_layers import LayerSplit

    frame = pl.read_parquet(data)
    top = 4
    probe = FinetuneConfig(base_model=base, load_in_4bit=False, lora_layers=top, max_train_examples=examples)
    rows = training_rows(frame, probe)
    steps = math.ceil(rows.height / batch)
    config = probe.model_copy(
        update={"max_steps": steps, "batch_size": batch, "warmup_steps": 0, "save_steps": 10_000}
    )
    models_dir = get_settings().models_dir

    # The cached path, as finetune_top_layers sets it up (without the curve and the scoring).
    set_seed(config.seed)
    model, tokenizer, _device = load_base(resolve_base_model(base, models_dir), False)
    peft_model = get_peft_model(model, lora_config(model, config))
    split = LayerSplit(peft_model, tokenizer, top, SYSTEM_PROMPT)
    t0 = time.perf_counter()
    train = split.encode_for_training(
        rows["prompt"].to_list(), rows["response"].to_list(), config.action_loss_weight
    )
    encode_s = time.perf_counter() - t0
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    peft_model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        loss = split.loss(train, list(range(step * batch, min((step + 1) * batch, len(train)))))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    epoch_s = time.perf_counter() - t0
    del split, peft_model, model, optimizer

    sft = finetune(frame, config, Path(out), models_dir=models_dir, resume=False)
    print(json.dumps({
        "examples": len(train), "steps": steps, "encode_s": encode_s, "epoch_s": epoch_s,
        "sft_s": sft.train_seconds, "sft_samples": sft.samples_seen,
    }))  # fmt: skip


def _cached_vs_sft(data: Path, out: Path, base: str | None, examples: int, batch: int) -> dict:
    return _in_child("_cached_vs_sft_worker", str(data), str(out), base, examples, batch)


def _decisions_per_min(base: str, adapter: str, states: list, merged: bool) -> float:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crypto_pipeline.llm.local import LocalLLM

    tokenizer = AutoTokenizer.from_pretrained(base)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base).to(device), adapter)
    if merged:
        model = model.merge_and_unload()
    llm = LocalLLM.from_objects(model.eval(), tokenizer, model_id=base, constrained=True, batch_size=8)
    llm.decide(states[:2])  # warm-up: grammar compile, caches
    started = time.perf_counter()
    llm.decide(states)
    return len(states) / (time.perf_counter() - started) * 60


def run(quick: bool = False) -> list[BenchResult]:
    import polars as pl

    from crypto_pipeline.state.build import states_from_table

    base = _arg("--base", None)
    steps = int(_arg("--steps", "2" if quick else "6") or 6)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = _dataset(tmp_path, steps)
        qlora = _train(data, tmp_path / "qlora", base, True, steps)
        lora = _train(data, tmp_path / "lora", base, False, steps)
        states = states_from_table(pl.read_parquet(tmp_path / "states.parquet").head(8 if quick else 24))
        merged = _decisions_per_min(lora["base"], lora["adapter"], states, merged=True)
        unmerged = _decisions_per_min(lora["base"], lora["adapter"], states, merged=False)
        # A multiple of 3 (the class-balanced subsample) and of the batch; BENCH_FINETUNE_EXAMPLES on a busy box.
        examples = int(os.environ.get("BENCH_FINETUNE_EXAMPLES", "12" if quick else "24"))
        cached = _cached_vs_sft(data, tmp_path / "sft_top4", base, examples, 4)
    note = f"{steps} steps, batch 2, base {Path(qlora['base']).name}"
    return [
        BenchResult("QLoRA 4-bit train", qlora["tokens_per_s"], "tokens/s", "float LoRA", lora["tokens_per_s"],
                    "report", note=note),
        BenchResult("QLoRA 4-bit train", qlora["samples_per_s"], "samples/s", "float LoRA",
                    lora["samples_per_s"], "report", note=note),
        BenchResult("QLoRA 4-bit peak memory", qlora["peak_mb"], "MiB", "float LoRA", lora["peak_mb"],
                    "< reference", higher_is_better=False, note=note),
        BenchResult("decide, adapter merged", merged, "decisions/min", "adapter unmerged", unmerged,
                    ">= 1x reference", note=f"{len(states)} states, constrained"),
        _cached_row(cached),
    ]  # fmt: skip


def _cached_row(c: dict) -> BenchResult:
    """Examples/s of one epoch by the cached path (its lower pass counted in full) against SFTTrainer's."""
    n = c["examples"]
    ours = n / (c["encode_s"] + c["epoch_s"]) * 60
    sft = c["sft_samples"] / c["sft_s"] * 60
    note = (
        f"{n} examples, batch 4, {c['steps']} steps, float LoRA on the last 4 layers, one process; per "
        f"example-epoch: cached {1000 * (c['encode_s'] + c['epoch_s']) / n:,.0f} ms (lower pass once "
        f"{1000 * c['encode_s'] / n:,.0f} ms + top-layers step {1000 * c['epoch_s'] / n:,.0f} ms; later "
        f"epochs pay the step only: {n * 60 / c['epoch_s'] / sft:.2f}x) vs SFTTrainer {60_000 / sft:,.0f} ms"
    )
    return BenchResult("fine-tune, cached lower layers (1 epoch)", ours, "examples/min",
                       "trl SFTTrainer, same LoRA, examples, batch", sft, "> 1x reference", note=note)  # fmt: skip


if __name__ == "__main__":
    print_table(run(quick="--quick" in sys.argv))

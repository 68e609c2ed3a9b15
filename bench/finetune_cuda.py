"""The fine-tuning code once on CUDA: QLoRA (4-bit NF4 base through bitsandbytes) of the embedded SmolLM2 on the
stored `sft_dataset`, evaluated against the base model, the majority class and RuleBased on the same
class-balanced validation sample through the real decision path (LocalLLM, constrained decoding).

It calls `train_evaluate_register` (what the `finetune` command and the `finetuned_model` asset call) without
a tracking URI: nothing is registered, the figures are printed as one JSON object. On a machine without CUDA
it runs the same code on the CPU (use small --steps and --eval there).

    .venv/bin/python bench/finetune_cuda.py --data DIR [--steps 300] [--batch 16] [--eval 150] [--out DIR]

DIR holds `sft_dataset.parquet` and `market_states.parquet`, exported from the warehouse by
`bench/finetune_cuda.py --export DIR` on the machine that ran `make run`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def export(out: Path) -> None:
    """Write the warehouse's sft_dataset and market_states (the rows the dataset was built from) to `out`."""

    from crypto_pipeline.config import get_settings
    from crypto_pipeline.warehouse import Warehouse

    out.mkdir(parents=True, exist_ok=True)
    warehouse = Warehouse(get_settings().warehouse_dir)
    dataset = warehouse.read("sft_dataset")
    states = warehouse.read("market_states", symbols=sorted(dataset["symbol"].unique().to_list()))
    keys = dataset.select("symbol", "at").unique()
    states = states.join(keys, on=["symbol", "at"], how="semi")
    dataset.write_parquet(out / "sft_dataset.parquet", compression="zstd", compression_level=19)
    states.write_parquet(out / "market_states.parquet", compression="zstd", compression_level=19)
    print(json.dumps({"examples": dataset.height, "states": states.height, "folder": str(out)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder with sft_dataset.parquet and market_states.parquet")
    parser.add_argument(
        "--export", type=Path, help="export the warehouse's dataset into this folder and stop"
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--examples", type=int, default=None, help="class-balanced train subsample")
    parser.add_argument("--eval", type=int, default=150, help="class-balanced validation examples")
    parser.add_argument("--float", action="store_true", help="plain float LoRA instead of QLoRA 4-bit")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.export:
        export(args.export)
        return
    if args.data is None:
        parser.error("--data is required (or --export)")

    import polars as pl
    import torch

    from crypto_pipeline.config import get_settings
    from crypto_pipeline.training.finetune import FinetuneConfig
    from crypto_pipeline.training.pipeline import train_evaluate_register

    frame = pl.read_parquet(args.data / "sft_dataset.parquet")
    states = pl.read_parquet(args.data / "market_states.parquet")
    cuda = torch.cuda.is_available()
    config = FinetuneConfig(
        load_in_4bit=not args.float,
        learning_rate=args.lr,
        max_steps=args.steps,
        batch_size=args.batch,
        max_train_examples=args.examples,
        save_steps=max(args.steps, 1),
        logging_steps=10,
    )
    out = args.out or Path(tempfile.mkdtemp(prefix="finetune-cuda-"))
    started = time.perf_counter()
    outcome = train_evaluate_register(
        frame,
        states,
        config,
        output_dir=out,
        models_dir=get_settings().models_dir,
        tracking_uri=None,
        dataset_card={},
        eval_size=args.eval,
        eval_batch_size=32 if cuda else 8,
        eval_load_in_4bit=not args.float and cuda,  # bitsandbytes' 4-bit kernels are for the GPU
        log_line=lambda line: print(line, flush=True),
    )
    result = outcome.result
    figures = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "mode": "LoRA float" if args.float else "QLoRA 4-bit NF4",
        "base": Path(result.base_model).name,
        "train_examples": result.train_examples,
        "steps": result.steps,
        "batch": args.batch,
        "train_seconds": round(result.train_seconds, 1),
        "tokens_per_s": round(result.tokens_per_second),
        "samples_per_s": round(result.samples_per_second, 1),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
        "first_loss": result.losses[0][1] if result.losses else None,
        "last_loss": result.losses[-1][1] if result.losses else None,
        "total_seconds": round(time.perf_counter() - started, 1),
        **{k: round(v, 3) for k, v in sorted(outcome.metrics.items())},
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

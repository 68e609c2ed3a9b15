"""QLoRA fine-tuning of the decision model on the `sft_dataset`: trl's `SFTTrainer`, a peft LoRA, and the
base loaded in 4-bit NF4 through bitsandbytes (which runs on CPU here as well as on CUDA).

The same code trains the embedded SmolLM2-135M on two CPU cores and a 7-8B model (hub id from the local
cache, or a folder) on a CUDA GPU: only the device and the compute dtype differ. The loss is on the
completion only (prompt tokens are masked), the prompt is rendered with the model's chat template exactly
as `LocalLLM` renders it, and training checkpoints every `save_steps` and resumes after an interruption.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from crypto_pipeline.llm.base_model import BaseModelUnavailableError, ensure_base_model, offline_hub
from crypto_pipeline.llm.prompts import build_messages
from crypto_pipeline.training.dataset import ACTIONS, DatasetError, dataset_fingerprint

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
_RUN_FILE = "run.json"


class FinetuneConfig(BaseModel):
    """Every knob of a fine-tune (the Dagster config and the CLI options mirror these fields)."""

    model_config = ConfigDict(frozen=True)

    base_model: str | None = Field(
        None, description="HF folder or hub id (local cache only); None: the embedded SmolLM2-135M-Instruct."
    )
    load_in_4bit: bool = Field(
        True, description="QLoRA: base in 4-bit NF4 (bitsandbytes); False: float LoRA."
    )
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    lora_layers: int | None = Field(
        None,
        ge=1,
        description="LoRA only on the last N transformer layers (None: every layer). The backward pass "
        "then stops at the lowest adapted layer: several times cheaper on CPU.",
    )
    learning_rate: float = Field(1e-3, gt=0)
    max_steps: int | None = Field(60, ge=1, description="Optimizer steps; None: train `epochs` epochs.")
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(640, ge=32, description="Longest tokenized example (prompt + response).")
    warmup_steps: int = Field(5, ge=0)
    seed: int = 0
    training_cutoff: datetime | None = Field(
        None, description="Only train examples whose label ended by then (None: the whole train split)."
    )
    max_train_examples: int | None = Field(
        None, ge=3, description="A seeded class-balanced subsample of the train split (None: all of it)."
    )
    save_steps: int = Field(20, ge=1, description="Checkpoint every this many steps (resume point).")
    logging_steps: int = Field(1, ge=1)
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (large models).")
    cache_lower_layers: bool = Field(
        False,
        description="Float LoRA on the last `lora_layers` only, the frozen layers below computed once per "
        "example and reused by every epoch, curve point and score (frozen_layers.py; CPU); False: trl's "
        "SFTTrainer over the whole model (QLoRA, GPU).",
    )
    action_loss_weight: float = Field(
        1.0, ge=1.0, description="Loss weight of the action's token against the response's other tokens."
    )
    curve_points: int = Field(
        5, ge=1, description="Validation balanced accuracy this many times during training (the curve)."
    )

    def fingerprint(self, data_fingerprint: str) -> str:
        """What a checkpoint must match to be resumed: the training config and the exact data."""
        payload = json.dumps(
            {"config": self.model_dump(mode="json"), "data": data_fingerprint}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class FinetuneResult:
    """What a fine-tune produced: the adapter folder and the figures of the run."""

    adapter_dir: Path
    base_model: str
    config: FinetuneConfig
    losses: list[tuple[int, float]]
    steps: int
    train_seconds: float
    train_examples: int
    samples_seen: int
    tokens_seen: int
    training_cutoff: datetime
    data_fingerprint: str
    device: str
    resumed_from: str | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)
    # (examples seen, validation balanced accuracy) during training, when the trainer measures it
    curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        return self.samples_seen / self.train_seconds if self.train_seconds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.train_seconds if self.train_seconds else 0.0


def resolve_base_model(base_model: str | None, models_dir: Path) -> str:
    """A loadable reference for the base: the embedded model's converted folder, a folder, or a hub id
    already in the local Hugging Face cache. Raises `BaseModelUnavailableError` with what to do."""
    if base_model is None:
        return str(ensure_base_model(models_dir))
    path = Path(base_model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelUnavailableError(f"base model folder {path} holds no config.json")
        return str(path)
    if path.is_absolute() or base_model.startswith((".", "~")) or base_model.count("/") != 1:
        raise BaseModelUnavailableError(f"base model {base_model!r} not found: no such folder")
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(base_model, "config.json"), str):
        raise BaseModelUnavailableError(
            f"base model {base_model!r} is not in the local Hugging Face cache and hubs are offline; "
            "download it where there is network, or give a folder"
        )
    return base_model


def training_rows(frame: pl.DataFrame, config: FinetuneConfig) -> pl.DataFrame:
    """The train split up to the training cutoff (optionally a class-balanced subsample), checked."""
    rows = frame.filter(pl.col("split") == "train")
    if config.training_cutoff is not None:
        cutoff = config.training_cutoff
        cutoff = cutoff.replace(tzinfo=UTC) if cutoff.tzinfo is None else cutoff
        rows = rows.filter(pl.col("label_end") <= cutoff)
    if rows.is_empty():
        where = f" with labels ending by {config.training_cutoff}" if config.training_cutoff else ""
        raise DatasetError(
            f"the dataset holds no training examples{where}: build sft_dataset over a longer range"
        )
    missing = sorted(set(ACTIONS) - set(rows["action"].unique().to_list()))
    if missing:
        raise DatasetError(
            f"the training examples lack the class(es) {', '.join(missing)}: "
            "a model cannot learn an action it never sees; widen the range or move the cutoff"
        )
    if config.max_train_examples is not None and rows.height > config.max_train_examples:
        rows = balanced_subsample(rows, config.max_train_examples, config.seed)
    return rows.sort("at", "symbol")


def balanced_subsample(rows: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    """About n rows, an equal share per action (fewer where a class is short), seeded."""
    per_class = max(1, n // len(ACTIONS))
    parts = [
        group.sample(min(per_class, group.height), seed=seed, shuffle=True)
        for _, group in rows.group_by("action", maintain_order=True)
    ]
    return pl.concat(parts).sort("at", "symbol")


def to_prompt_completion(rows: pl.DataFrame) -> Any:
    """A `datasets.Dataset` in trl's conversational prompt-completion form (loss on the completion only)."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [
                build_messages(p, s) for p, s in zip(rows["prompt"], rows["system_prompt"], strict=True)
            ],
            "completion": [[{"role": "assistant", "content": r}] for r in rows["response"]],
        }
    )


def load_base(base: str, load_in_4bit: bool) -> tuple[Any, Any, str]:
    """(model, tokenizer, device) for training: NF4 4-bit or float, on CUDA when there is one."""
    offline = offline_hub()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    # bf16 compute on GPUs; float32 on CPU, where bf16 matmuls are slower and less exact.
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    hub = {"local_files_only": True} if offline else {}
    kwargs: dict[str, Any] = {"dtype": dtype, **hub}
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = device
    elif cuda:
        kwargs["device_map"] = device
    tokenizer = AutoTokenizer.from_pretrained(base, **hub)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    return model, tokenizer, device


def _last_layers(model: Any, n: int | None) -> list[int] | None:
    """Indices of the last `n` decoder layers (None: all layers, peft's default)."""
    if n is None:
        return None
    total = int(model.config.num_hidden_layers)
    return list(range(max(0, total - n), total))


def lora_config(model: Any, config: FinetuneConfig) -> Any:
    """The LoRA `config` asks for on `model` (its last `lora_layers` layers, or every layer): one
    definition for both trainers (SFTTrainer here, the cached path in frozen_layers.py)."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        layers_to_transform=_last_layers(model, config.lora_layers),
        task_type="CAUSAL_LM",
    )


def finetune(
    frame: pl.DataFrame,
    config: FinetuneConfig,
    output_dir: Path,
    *,
    models_dir: Path,
    progress: bool = False,
    log_line: Callable[[str], None] | None = None,
    callbacks: Sequence[Any] = (),
    resume: bool = True,
) -> FinetuneResult:
    """Train a LoRA adapter on the train split of `frame` (the `sft_dataset` rows) into `output_dir`.

    Checkpoints go to `output_dir/checkpoints`; a rerun with the same config and data resumes from the
    last one (`resume=False` starts over). The adapter and tokenizer end in `output_dir/adapter`.
    `progress` shows a rich bar (the command line); `log_line` receives one line per logged step with the
    loss (Dagster's log). Raises `DatasetError` for an empty or class-less range and
    `BaseModelUnavailableError` when the base model cannot be found, before any heavy work.
    """
    rows = training_rows(frame, config)
    base = resolve_base_model(config.base_model, models_dir)
    data_fp = dataset_fingerprint(rows)
    output_dir = Path(output_dir)
    checkpoints = output_dir / CHECKPOINTS_DIR
    resumed_from = _prepare_output(output_dir, config.fingerprint(data_fp), resume)

    from peft import prepare_model_for_kbit_training
    from transformers import TrainerCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(config.seed)
    model, tokenizer, device = load_base(base, config.load_in_4bit)
    if config.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing
        )
    lora = lora_config(model, config)
    import torch

    args = SFTConfig(
        output_dir=str(checkpoints),
        max_steps=config.max_steps or -1,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_steps,
        max_length=config.max_length,
        completion_only_loss=True,
        packing=False,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        bf16=device == "cuda" and torch.cuda.is_bf16_supported(),
        use_cpu=device == "cpu",
        gradient_checkpointing=config.gradient_checkpointing,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
    )

    class _LogLines(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
        ) -> None:
            if log_line is not None and logs and "loss" in logs:
                log_line(
                    f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
                    f"lr {logs.get('learning_rate', 0.0):.2e}"
                )

    extra: list[Any] = [_LogLines(), *callbacks]
    if progress:
        from trl.trainer.callbacks import RichProgressCallback

        extra.append(RichProgressCallback())
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_prompt_completion(rows),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=extra,
    )
    if log_line is not None:
        log_line(
            f"fine-tuning {base} ({'QLoRA 4-bit NF4' if config.load_in_4bit else 'LoRA float'}, {device}) on "
            f"{rows.height} examples" + (f", resuming from {resumed_from}" if resumed_from else "")
        )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resumed_from)
    seconds = time.perf_counter() - started

    adapter_dir = save_adapter(trainer.model, tokenizer, output_dir)
    state = trainer.state
    history = [dict(entry) for entry in state.log_history]
    losses = [(int(e["step"]), float(e["loss"])) for e in history if "loss" in e and "step" in e]
    effective_batch = config.batch_size * config.grad_accum
    return FinetuneResult(
        adapter_dir=adapter_dir,
        base_model=base,
        config=config,
        losses=losses,
        steps=int(state.global_step),
        train_seconds=seconds,
        train_examples=rows.height,
        samples_seen=int(state.global_step) * effective_batch,
        tokens_seen=int(getattr(state, "num_input_tokens_seen", 0) or 0),
        training_cutoff=rows["label_end"].max(),
        data_fingerprint=data_fp,
        device=device,
        resumed_from=resumed_from,
        log_history=history,
    )


def save_adapter(model: Any, tokenizer: Any, output_dir: Path) -> Path:
    """The trained LoRA adapter and its tokenizer in `output_dir/adapter`, replacing an earlier one."""
    adapter_dir = Path(output_dir) / ADAPTER_DIR
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    return adapter_dir


def _prepare_output(output_dir: Path, fingerprint: str, resume: bool) -> str | None:
    """The checkpoint to resume from, if one exists for this very config and data; else a clean start."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = output_dir / CHECKPOINTS_DIR
    run_file = output_dir / _RUN_FILE
    same_run = run_file.is_file() and json.loads(run_file.read_text()).get("fingerprint") == fingerprint
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if resume and same_run and last:
        return last
    if checkpoints.exists():  # another config's or data's checkpoints would resume the wrong run
        shutil.rmtree(checkpoints)
    output_dir.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps({"fingerprint": fingerprint}))
    return None

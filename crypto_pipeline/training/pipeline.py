"""One call from a stored `sft_dataset` to a registered `crypto-policy@challenger`: fine-tune, evaluate the
adapter and its references (base model, majority class, RuleBased) on the same class-balanced validation
sample through the real decision path, evaluate the test split once after that, plot the loss, log and
register. The Dagster asset and the CLI are thin wrappers over `train_evaluate_register`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from crypto_pipeline.llm.local import LocalLLM
from crypto_pipeline.llm.rule_based import RuleBased
from crypto_pipeline.training.evaluate import (
    Evaluation,
    MajorityClass,
    evaluate,
    evaluation_rows,
    evaluation_table,
    states_for,
)
from crypto_pipeline.training.finetune import FinetuneConfig, FinetuneResult, finetune, resolve_base_model
from crypto_pipeline.training.registry import RegisteredVersion, log_and_register


@dataclass
class TrainingOutcome:
    result: FinetuneResult
    evaluations: dict[str, Evaluation]  # "tuned", "base", "majority", "rules", "test"
    metrics: dict[str, float]
    registered: RegisteredVersion | None
    loss_plot: Path | None


def plot_loss(losses: list[tuple[int, float]], out: Path) -> Path | None:
    """The training loss curve as a PNG (None when nothing was logged)."""
    if not losses:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([s for s, _ in losses], [v for _, v in losses], marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (completion tokens)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def train_evaluate_register(
    frame: pl.DataFrame,
    market_states: pl.DataFrame,
    config: FinetuneConfig,
    *,
    output_dir: Path,
    models_dir: Path,
    tracking_uri: str | None,
    dataset_card: dict[str, Any],
    eval_size: int | None = 24,
    eval_batch_size: int = 8,
    evaluate_test: bool = True,
    eval_load_in_4bit: bool = False,
    progress: bool = False,
    log_line: Callable[[str], None] | None = None,
) -> TrainingOutcome:
    """Fine-tune on `frame` (the sft_dataset rows), evaluate, and (with a `tracking_uri`) register.

    `market_states` holds the stored states the examples were built from (evaluation rebuilds them so the
    providers decide through the very path the trading loop uses).
    """
    say = log_line or (lambda _line: None)
    result = finetune(frame, config, output_dir, models_dir=models_dir, progress=progress, log_line=log_line)
    base = resolve_base_model(config.base_model, models_dir)
    rows = evaluation_rows(frame, "validation", eval_size, config.seed)
    states = states_for(rows, market_states)
    # Float by default: LocalLLM then merges the adapter into the weights (how it serves), and on CPU
    # bitsandbytes' 4-bit matmuls decode several times slower than float here.
    common = {"constrained": True, "batch_size": eval_batch_size, "load_in_4bit": eval_load_in_4bit}
    tuned_llm = LocalLLM(base, adapter=result.adapter_dir, **common)
    evaluations: dict[str, Evaluation] = {}
    for key, provider in (
        ("tuned", tuned_llm),
        ("base", LocalLLM(base, **common)),
        ("majority", MajorityClass.from_train(frame)),
        ("rules", RuleBased()),
    ):
        say(f"evaluating {key} on {rows.height} validation examples")
        evaluations[key] = evaluate(provider, rows, states, "validation")
    if evaluate_test:  # once, after the model is chosen, reported apart
        test_rows = evaluation_rows(frame, "test", eval_size, config.seed)
        evaluations["test"] = evaluate(tuned_llm, test_rows, states_for(test_rows, market_states), "test")
    metrics: dict[str, float] = {}
    for key, ev in evaluations.items():
        metrics |= ev.metrics("" if key in ("tuned", "test") else f"{key}_")
    for name, value in sorted(metrics.items()):
        say(f"{name} = {value:.3f}")
    loss_plot = plot_loss(result.losses, output_dir / "loss.png")
    registered = None
    if tracking_uri is not None:
        registered = log_and_register(
            tracking_uri,
            result,
            dataset_frame=frame,
            dataset_card=dataset_card,
            metrics=metrics,
            predictions=evaluation_table(evaluations),
            confusion={k: ev.confusion for k, ev in evaluations.items()},
            loss_plot=loss_plot,
        )
        say(f"registered {registered.uri} (version {registered.version}, run {registered.run_id})")
    return TrainingOutcome(result, evaluations, metrics, registered, loss_plot)

"""One call from a stored `sft_dataset` to a registered `crypto-policy@challenger`: fine-tune, evaluate the
adapter and its references on the same class-balanced validation sample, score the test split once after
that, plot the loss and the learning curve, log and register. The Dagster asset and the CLI are thin
wrappers over `train_evaluate_register`.

What is measured, and how:
- the tuned and the base model's ACTION on every validation and test example, from their distribution over
  the action's token (one forward pass each, `action_slot.py`), with bootstrap 95% intervals and the
  paired interval of tuned minus base (`intervals.py`);
- the references on the same examples: the majority class, RuleBased (through `decide`, as it trades) and
  the "how much there is to learn" logistic regression on the state's numbers (`ceiling.py`);
- the tuned model's whole answers on a small validation sample through the real decision path (constrained
  generation, merged adapter): the valid-output rate, how often its action is the scored one, its action
  shares, mean confidence and how varied its reasoning is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from crypto_pipeline.llm.action_slot import ACTIONS
from crypto_pipeline.llm.behaviour import DecisionProfile
from crypto_pipeline.llm.local import LocalLLM
from crypto_pipeline.llm.rule_based import RuleBased
from crypto_pipeline.training.ceiling import Ceiling, logistic_ceiling
from crypto_pipeline.training.evaluate import (
    Evaluation,
    MajorityClass,
    evaluate,
    evaluation_rows,
    evaluation_table,
    paired_difference,
    score_probabilities,
    states_for,
)
from crypto_pipeline.training.finetune import (
    FinetuneConfig,
    FinetuneResult,
    balanced_subsample,
    finetune,
    resolve_base_model,
)
from crypto_pipeline.training.frozen_layers import finetune_top_layers
from crypto_pipeline.training.intervals import Interval
from crypto_pipeline.training.registry import RegisteredVersion, log_and_register


@dataclass
class TrainingOutcome:
    result: FinetuneResult
    evaluations: dict[str, Evaluation]  # "tuned", "base", "majority", "rules", "test", "base_test"
    metrics: dict[str, float]
    registered: RegisteredVersion | None
    loss_plot: Path | None
    ceiling: Ceiling | None = None
    differences: dict[str, dict[str, Interval]] | None = None  # split -> metric -> tuned minus base
    curve_plot: Path | None = None


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


def plot_curve(curve: list[tuple[int, float]], references: dict[str, float], out: Path) -> Path | None:
    """Validation balanced accuracy against training examples seen, with the references as lines."""
    if not curve:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot([n for n, _ in curve], [v for _, v in curve], marker="o", label="tuned (validation)")
    for (name, value), style in zip(references.items(), ("--", ":", "-."), strict=False):
        ax.axhline(value, linestyle=style, color="grey", linewidth=1)
        ax.annotate(name, (0, value), textcoords="offset points", xytext=(2, 3), fontsize=8, color="grey")
    ax.set_xlabel("training examples seen")
    ax.set_ylabel("balanced accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
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
    eval_size: int | None = 300,
    generate_size: int = 24,
    eval_batch_size: int = 8,
    evaluate_test: bool = True,
    eval_load_in_4bit: bool = False,
    progress: bool = False,
    log_line: Callable[[str], None] | None = None,
) -> TrainingOutcome:
    """Fine-tune on `frame` (the sft_dataset rows), evaluate, and (with a `tracking_uri`) register.

    `market_states` holds the stored states the examples were built from (evaluation rebuilds them so the
    providers decide through the very path the trading loop uses). `eval_size`: the class-balanced
    validation and test samples scored by action; `generate_size`: the validation examples the tuned
    model answers in full (constrained generation).
    """
    import numpy as np

    say = log_line or (lambda _line: None)
    rows = evaluation_rows(frame, "validation", eval_size, config.seed)
    test_rows = evaluation_rows(frame, "test", eval_size, config.seed) if evaluate_test else None
    scored = {"validation": rows} | ({"test": test_rows} if test_rows is not None else {})
    probabilities: dict[str, dict[str, np.ndarray]] = {}
    base = resolve_base_model(config.base_model, models_dir)
    common = {"constrained": True, "batch_size": eval_batch_size, "load_in_4bit": eval_load_in_4bit}
    if config.cache_lower_layers:
        run = finetune_top_layers(
            frame, config, output_dir, models_dir=models_dir, scored=scored, log_line=say
        )
        result = run.result
        for name, encoded in run.encoded.items():
            probabilities[name] = {
                "tuned": run.split.action_probabilities(encoded),
                "base": run.split.action_probabilities(encoded, adapter=False),
            }
        del run
    else:
        result = finetune(
            frame, config, output_dir, models_dir=models_dir, progress=progress, log_line=log_line
        )
        # Each model loads once and scores every split (the tuned one answers in full below too).
        llms = {
            "tuned": LocalLLM(base, adapter=result.adapter_dir, **common),
            "base": LocalLLM(base, **common),
        }
        for name, r in scored.items():
            states = states_for(r, market_states)
            probabilities[name] = {
                who: _as_array(llm.action_probabilities(states)) for who, llm in llms.items()
            }
    evaluations: dict[str, Evaluation] = {
        "tuned": score_probabilities("validation", rows, probabilities["validation"]["tuned"], config.seed),
        "base": score_probabilities("validation", rows, probabilities["validation"]["base"], config.seed),
    }
    states = states_for(rows, market_states)
    for key, provider in (("majority", MajorityClass.from_train(frame)), ("rules", RuleBased())):
        evaluations[key] = evaluate(provider, rows, states, "validation")
    differences = {
        "validation": paired_difference(rows, evaluations["tuned"], evaluations["base"], config.seed)
    }
    if test_rows is not None:  # once, after the model is chosen, reported apart
        evaluations["test"] = score_probabilities(
            "test", test_rows, probabilities["test"]["tuned"], config.seed
        )
        evaluations["base_test"] = score_probabilities(
            "test", test_rows, probabilities["test"]["base"], config.seed
        )
        differences["test"] = paired_difference(
            test_rows, evaluations["test"], evaluations["base_test"], config.seed
        )
    ceiling = logistic_ceiling(frame, market_states, scored, seed=config.seed)
    # The tuned model's whole answers through the serving path: LocalLLM merges the adapter, decodes
    # under the grammar. Float by default: on CPU bitsandbytes' 4-bit matmuls decode several times slower.
    tuned_llm = (
        LocalLLM(base, adapter=result.adapter_dir, **common) if config.cache_lower_layers else llms["tuned"]
    )
    generated_rows = (
        balanced_subsample(rows, generate_size, config.seed) if generate_size < rows.height else rows
    )
    say(f"answering {generated_rows.height} validation examples in full (constrained generation)")
    generated = evaluate(tuned_llm, generated_rows, states_for(generated_rows, market_states), "validation")
    metrics = _metrics(evaluations, differences, ceiling, generated, generated_rows, rows)
    for name, value in sorted(metrics.items()):
        say(f"{name} = {value:.3f}")
    loss_plot = plot_loss(result.losses, output_dir / "loss.png")
    references = {
        "base": evaluations["base"].balanced_accuracy,
        "logistic regression": ceiling.balanced_accuracy["validation"].value,
        "chance": 1 / 3,
    }
    curve_plot = plot_curve(result.curve, references, output_dir / "learning_curve.png")
    registered = None
    if tracking_uri is not None:
        registered = log_and_register(
            tracking_uri,
            result,
            dataset_frame=frame,
            dataset_card=dataset_card,
            metrics=metrics,
            predictions=evaluation_table(evaluations | {"generated": generated}),
            confusion={k: ev.confusion for k, ev in evaluations.items()},
            loss_plot=loss_plot,
            plots=[p for p in (curve_plot,) if p is not None],
        )
        say(f"registered {registered.uri} (version {registered.version}, run {registered.run_id})")
    return TrainingOutcome(
        result, evaluations, metrics, registered, loss_plot, ceiling, differences, curve_plot
    )


def _as_array(rows: list[dict[str, float]]) -> Any:
    import numpy as np

    return np.array([[r[a] for a in ACTIONS] for r in rows], dtype=float).reshape(-1, len(ACTIONS))


def _metrics(
    evaluations: dict[str, Evaluation],
    differences: dict[str, dict[str, Interval]],
    ceiling: Ceiling,
    generated: Evaluation,
    generated_rows: pl.DataFrame,
    rows: pl.DataFrame,
) -> dict[str, float]:
    """Every figure under its fixed MLflow name (`crypto-pipeline models` and MLflow's compare view read them)."""
    prefixes = {"tuned": "", "test": "", "base": "base_", "base_test": "base_", "majority": "majority_"}
    metrics: dict[str, float] = {}
    for key, ev in evaluations.items():
        metrics |= ev.metrics(prefixes.get(key, f"{key}_"))
    for split, diffs in differences.items():
        s = "val" if split == "validation" else split
        for name, interval in diffs.items():
            metrics |= interval.metrics(f"tuned_minus_base_{s}_{name}")
    metrics |= ceiling.metrics()
    # The scored actions are valid by construction: the valid-output rate is the generated answers'.
    metrics["val_valid_json_rate"] = generated.valid_json_rate
    metrics.pop("test_valid_json_rate", None)
    metrics.pop("base_val_valid_json_rate", None)
    metrics.pop("base_test_valid_json_rate", None)
    scored = dict(
        zip(zip(rows["symbol"], rows["at"], strict=True), evaluations["tuned"].predicted, strict=True)
    )
    said = generated.predictions
    keys = list(zip(said["symbol"], said["at"], strict=True))
    metrics["val_generated_examples"] = float(len(keys))
    metrics["val_action_agreement"] = (
        sum(scored[k] == p for k, p in zip(keys, said["predicted"], strict=True)) / len(keys) if keys else 0.0
    )
    profile = DecisionProfile.from_columns(
        [p if p in ACTIONS else "HOLD" for p in said["predicted"]],  # an invalid answer trades as HOLD
        said["confidence"].to_list(),
        said["reasoning"].to_list(),
        valid=said["valid"].to_list(),
    )
    metrics |= profile.as_metrics("val_")
    return metrics

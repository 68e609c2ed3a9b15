"""Evaluation through the real decision path: any `DecisionProvider` (LocalLLM with constrained decoding,
RuleBased, a majority-class predictor) decides on rebuilt market states, and its actions are scored against
the labels. Metric names are fixed (`{prefix}{split}_valid_json_rate`, ...) so MLflow runs line up.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from crypto_pipeline.llm.decision import Action, TradeDecision
from crypto_pipeline.llm.prompts import build_user_prompt
from crypto_pipeline.llm.provider import DecisionProvider, decide_safely
from crypto_pipeline.state import MarketState
from crypto_pipeline.state.build import state_from_row
from crypto_pipeline.training.dataset import ACTIONS, DatasetError
from crypto_pipeline.training.finetune import balanced_subsample
from crypto_pipeline.training.intervals import METRICS, Interval, bootstrap, paired_bootstrap

SPLIT_PREFIX = {"validation": "val", "test": "test"}


@dataclass
class Evaluation:
    """One provider's figures on one split's sample; `predictions` is the per-example table. With
    `intervals` (bootstrap 95%, `intervals.py`), `metrics` adds `_ci_low`/`_ci_high` beside each figure."""

    split: str
    valid_json_rate: float
    balanced_accuracy: float
    macro_f1: float
    confusion: list[list[int]]  # rows: true label in ACTIONS order, columns: predicted
    predictions: pl.DataFrame = field(default_factory=pl.DataFrame)
    intervals: dict[str, Interval] = field(default_factory=dict)  # "balanced_accuracy", "macro_f1"

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """`{prefix}val_valid_json_rate`, `{prefix}val_balanced_accuracy`, `{prefix}val_macro_f1` (or test_),
        each figure with its interval where there is one."""
        s = SPLIT_PREFIX[self.split]
        out = {
            f"{prefix}{s}_valid_json_rate": self.valid_json_rate,
            f"{prefix}{s}_balanced_accuracy": self.balanced_accuracy,
            f"{prefix}{s}_macro_f1": self.macro_f1,
        }
        for name, interval in self.intervals.items():
            out |= interval.metrics(f"{prefix}{s}_{name}")
        return out

    @property
    def predicted(self) -> list[str]:
        return self.predictions["predicted"].to_list()


class MajorityClass:
    """The reference that always answers the most frequent training action."""

    def __init__(self, action: str) -> None:
        self.action = Action(action)
        self.name = f"majority:{self.action.value}"

    @classmethod
    def from_train(cls, frame: pl.DataFrame) -> MajorityClass:
        counts = Counter(frame.filter(pl.col("split") == "train")["action"].to_list())
        # Ties break in ACTIONS order so the reference is deterministic.
        return cls(max(ACTIONS, key=lambda a: (counts.get(a, 0), -ACTIONS.index(a))))

    def decide(self, states: list[MarketState]) -> list[TradeDecision]:
        return [TradeDecision(action=self.action, confidence=50.0, symbol=s.symbol) for s in states]


def evaluation_rows(frame: pl.DataFrame, split: str, size: int | None, seed: int = 0) -> pl.DataFrame:
    """A seeded class-balanced sample of `split` (all of it when `size` is None or larger)."""
    rows = frame.filter(pl.col("split") == split)
    if rows.is_empty():
        raise DatasetError(f"the dataset holds no {split} examples to evaluate on")
    if size is not None and rows.height > size:
        rows = balanced_subsample(rows, size, seed)
    return rows.sort("at", "symbol")


def states_for(rows: pl.DataFrame, market_states: pl.DataFrame) -> list[MarketState]:
    """The MarketStates of `rows` rebuilt from the stored `market_states` table (what the live path sees).

    Raises if a state is missing or no longer renders to the example's stored prompt (stale dataset).
    """
    # The example's own prompt is the reference: the table's prompt columns (if any) are not read.
    stored = market_states.drop("prompt", "prompt_version", "prompt_hash", strict=False)
    keyed = stored.join(rows.select("symbol", "at", "prompt"), on=["symbol", "at"], how="inner")
    by_key = {(r["symbol"], r["at"]): r for r in keyed.iter_rows(named=True)}
    states = []
    for symbol, at in rows.select("symbol", "at").iter_rows():
        row = by_key.get((symbol, at))
        if row is None:
            raise DatasetError(f"no market state for {symbol} at {at}: rebuild sft_dataset")
        state = state_from_row(row)
        if build_user_prompt(state) != row["prompt"]:
            raise DatasetError(f"the stored prompt of {symbol} at {at} differs from its market state")
        states.append(state)
    return states


def score(split: str, labels: list[str], decisions: list[TradeDecision], rows: pl.DataFrame) -> Evaluation:
    """Valid-JSON rate, balanced accuracy and macro-F1 of the actions (an invalid answer counts as a miss,
    whatever HOLD it was turned into), and the confusion matrix."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

    predicted = [d.action.value if d.valid else "INVALID" for d in decisions]
    valid = sum(d.valid for d in decisions)
    return Evaluation(
        split=split,
        valid_json_rate=valid / len(decisions) if decisions else 0.0,
        balanced_accuracy=float(balanced_accuracy_score(labels, predicted)) if labels else 0.0,
        macro_f1=float(f1_score(labels, predicted, labels=list(ACTIONS), average="macro", zero_division=0)),
        confusion=confusion_matrix(labels, predicted, labels=list(ACTIONS)).tolist(),
        predictions=rows.select("symbol", "at", "action").with_columns(
            pl.Series("predicted", predicted, dtype=pl.String),
            pl.Series("valid", [d.valid for d in decisions], dtype=pl.Boolean),
            pl.Series("raw_text", [d.raw_text or "" for d in decisions], dtype=pl.String),
            pl.Series("confidence", [d.confidence for d in decisions], dtype=pl.Float64),
            pl.Series("reasoning", [d.reasoning or "" for d in decisions], dtype=pl.String),
        ),
    )


def evaluate(
    provider: DecisionProvider, rows: pl.DataFrame, states: list[MarketState], split: str
) -> Evaluation:
    """Decide on `states` through `provider` (the same call the trading loop makes) and score."""
    decisions = decide_safely(provider, states)
    return with_intervals(score(split, rows["action"].to_list(), decisions, rows), rows)


def with_intervals(evaluation: Evaluation, rows: pl.DataFrame, seed: int = 0) -> Evaluation:
    """`evaluation` with the bootstrap intervals of its balanced accuracy and macro-F1."""
    labels = rows["action"].to_list()
    evaluation.intervals = {m: bootstrap(labels, evaluation.predicted, m, seed=seed) for m in METRICS}
    return evaluation


def score_probabilities(split: str, rows: pl.DataFrame, probabilities: Any, seed: int = 0) -> Evaluation:
    """Score the actions picked from each example's action-slot probabilities ((n, 3), ACTIONS order: one
    forward pass, no generation; every answer is valid by construction), with intervals."""
    import numpy as np

    probs = np.asarray(probabilities, dtype=float)
    picked = [
        TradeDecision(action=Action(ACTIONS[i]), confidence=float(100 * p.max()))
        for i, p in zip(probs.argmax(axis=1), probs, strict=True)
    ]
    evaluation = score(split, rows["action"].to_list(), picked, rows)
    evaluation.predictions = evaluation.predictions.with_columns(
        *(pl.Series(f"p_{a.lower()}", probs[:, i]) for i, a in enumerate(ACTIONS))
    )
    return with_intervals(evaluation, rows, seed)


def paired_difference(rows: pl.DataFrame, a: Evaluation, b: Evaluation, seed: int = 0) -> dict[str, Interval]:
    """Per metric, A minus B on the same examples with the paired bootstrap interval."""
    labels = rows["action"].to_list()
    return {m: paired_bootstrap(labels, a.predicted, b.predicted, m, seed=seed) for m in METRICS}


def evaluation_table(evaluations: dict[str, Evaluation]) -> dict[str, list[Any]]:
    """All providers' predictions in one column-oriented table (for `mlflow.log_table`)."""
    columns: dict[str, list[Any]] = {}
    for who, ev in evaluations.items():
        frame = ev.predictions.with_columns(
            pl.lit(who).alias("model"), pl.lit(ev.split).alias("split"), pl.col("at").dt.to_string()
        )
        for key, values in frame.to_dict(as_series=False).items():
            columns.setdefault(key, []).extend(values)
    return columns


def model_checks(metrics: dict[str, float]) -> dict[str, tuple[bool, dict[str, float]]]:
    """The fine-tuned model's checks, by name: (passed, the figures it read). `valid_json_rate`: every
    validation answer is valid JSON (constrained decoding guarantees it); `beats_base_model`: the adapter's
    validation balanced accuracy is above the base model's."""
    json_rate = metrics["val_valid_json_rate"]
    tuned, base = metrics["val_balanced_accuracy"], metrics["base_val_balanced_accuracy"]
    return {
        "valid_json_rate": (json_rate == 1.0, {"val_valid_json_rate": json_rate}),
        "beats_base_model": (
            tuned > base,
            {"val_balanced_accuracy": tuned, "base_val_balanced_accuracy": base},
        ),
    }

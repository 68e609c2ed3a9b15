"""How much there is to learn: a logistic regression on the market state's own numbers, on the same split.

The LLM reads the state as text; this reads the same figures as numbers (every indicator of every
timeframe the prompt shows, price levels left out since they do not compare across symbols and months).
Fitted on the train split only, scored on the very validation and test samples the LLM is scored on.
If it cannot beat chance, no prompt-reading model will; if it can, that is the bar a fine-tune aims at.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from crypto_pipeline.training.intervals import Interval, bootstrap

# Absolute price levels and bar times: not comparable across symbols and months.
_NOT_FEATURES = ("at", "timestamp", "price", "price_bar_close", "volume_24h")


def feature_columns(market_states: pl.DataFrame) -> list[str]:
    """The state's numeric, scale-free columns (what the prompt renders as figures)."""
    numeric = (pl.Float32, pl.Float64, pl.Int32, pl.Int64)
    return [
        c
        for c in market_states.columns
        if market_states[c].dtype in numeric and c not in _NOT_FEATURES and not c.startswith("bar_close")
    ]


@dataclass
class Ceiling:
    """The reference model's predictions and figures per scored split."""

    columns: list[str]
    train_examples: int
    predictions: dict[str, list[str]]
    balanced_accuracy: dict[str, Interval]

    def metrics(self) -> dict[str, float]:
        """`logreg_val_balanced_accuracy` (+ `_ci_low`/`_ci_high`), the same for test."""
        out: dict[str, float] = {}
        for split, interval in self.balanced_accuracy.items():
            out |= interval.metrics(f"logreg_{'val' if split == 'validation' else split}_balanced_accuracy")
        return out


def logistic_ceiling(
    frame: pl.DataFrame, market_states: pl.DataFrame, scored: dict[str, pl.DataFrame], seed: int = 0
) -> Ceiling:
    """Fit on `frame`'s train split (every example), score each of `scored` (split -> rows with symbol, at,
    action), joined to `market_states` by (symbol, at)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    columns = feature_columns(market_states)
    # A column with no value anywhere in train (e.g. an indicator not warm yet) carries nothing.
    train = _numbers(frame.filter(pl.col("split") == "train"), market_states, columns)
    columns = [c for c in columns if train[c].null_count() < train.height]
    model = make_pipeline(
        SimpleImputer(),
        StandardScaler(),
        LogisticRegression(max_iter=2000, C=0.1, class_weight="balanced", random_state=seed),
    )
    model.fit(train.select(columns).to_numpy(), train["action"].to_list())
    predictions, figures = {}, {}
    for split, rows in scored.items():
        numbers = _numbers(rows, market_states, columns)
        predicted = [str(p) for p in model.predict(numbers.select(columns).to_numpy())]
        predictions[split] = predicted
        figures[split] = bootstrap(numbers["action"].to_list(), predicted, "balanced_accuracy", seed=seed)
    return Ceiling(columns, train.height, predictions, figures)


def _numbers(rows: pl.DataFrame, market_states: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """`rows` in their own order with the state's `columns` beside them (as floats, NaN as null)."""
    states = market_states.select("symbol", "at", *columns).unique(["symbol", "at"], keep="last")
    joined = (
        rows.select("symbol", "at", "action")
        .with_row_index("_order")
        .join(states, on=["symbol", "at"], how="left")
    )
    return joined.sort("_order").with_columns(pl.col(c).cast(pl.Float64).fill_nan(None) for c in columns)

"""The baselines every model must beat, as long/flat signals at each bar's close (the engine fills them
at the next open): buy-and-hold, `ema_cross`, an RSI mean-reversion rule, and a LightGBM classifier
trained per fold on the same causal features,
labels (`training.labels`) and folds as the fine-tuned LLM. `RuleBased` (a `DecisionProvider`) runs through the risk
engine with `engine.run_policy` like any LLM."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl

from crypto_pipeline.backtest.engine import ema_cross_long, wide
from crypto_pipeline.backtest.folds import Fold
from crypto_pipeline.features import FEATURE_COLUMNS, compute_features
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.training.dataset import DatasetConfig
from crypto_pipeline.training.labels import action_expr, fit_thresholds, forward_returns, volatility_scaled

SIGNAL_POLICIES = ("buy_hold", "ema_cross", "rsi", "lgbm")


def buy_hold_long(close: pd.DataFrame) -> pd.DataFrame:
    """Always long: bought at the first open after the first close, held to the end."""
    return pd.DataFrame(True, index=close.index, columns=close.columns)


def rsi(close: pd.DataFrame, period: int = 14) -> pd.DataFrame:
    """Wilder's RSI (smoothing alpha 1/period)."""
    delta = close.diff()
    up = delta.clip(lower=0).ewm(alpha=1 / period, adjust=False, min_periods=period).mean()
    down = (-delta.clip(upper=0)).ewm(alpha=1 / period, adjust=False, min_periods=period).mean()
    return 100 - 100 / (1 + up / down)


def rsi_long(close: pd.DataFrame, period: int = 14, lower: float = 30.0, upper: float = 70.0) -> pd.DataFrame:
    """Mean reversion: enter when RSI closes below `lower`, stay long until it closes above `upper`."""
    values = rsi(close, period).to_numpy()
    out = np.zeros(values.shape, dtype=bool)
    holding = np.zeros(values.shape[1], dtype=bool)
    for i in range(values.shape[0]):
        row = values[i]
        holding = np.where(row < lower, True, np.where(row > upper, False, holding))
        out[i] = holding
    return pd.DataFrame(out, index=close.index, columns=close.columns)


# --- LightGBM -------------------------------------------------------------------------------------
# The same labels as the fine-tuned LLM (`training.labels`, with `training.dataset.DatasetConfig`'s
# horizon, volatility scaling and class shares): the forward return from the open after the decision to
# the close `horizon` later, scaled by the 1h ATR%, cut into SELL / HOLD / BUY by thresholds fitted on
# the fold's training rows only. The classifier's action drives a long/flat signal the way a decision
# does: BUY enters, SELL exits, HOLD keeps the current state.
LGBM_MIN_BUY_PROBABILITY = 0.40  # BUY must also be the most likely class


def lgbm_features(bars: pl.DataFrame, timeframe: str) -> pl.DataFrame:
    """Causal features (the project's `compute_features`, proved free of look-ahead) per bar, with the
    decision time `at` (the bar's close) and the LLM's label inputs (forward return, ATR%)."""
    feats = compute_features(bars, timeframe)
    scale_free = [c for c in FEATURE_COLUMNS if not c.startswith(("ema_", "macd", "atr_"))]
    table = feats.select(
        "symbol",
        "timestamp",
        (pl.col("timestamp") + Timeframe.parse(timeframe).duration).alias("at"),
        *scale_free,
        (pl.col("macd_hist") / pl.col("close")).alias("macd_hist_rel"),
        (pl.col("atr_14") / pl.col("close") * 100).alias("atr_pct"),
    )
    labelled = forward_returns(bars, table.select("symbol", "at"), DatasetConfig().horizon, timeframe)
    return table.join(
        labelled.select("symbol", "at", "label_end", "forward_return"), on=["symbol", "at"], how="left"
    )


LGBM_CLASSES = ("SELL", "HOLD", "BUY")


def lgbm_training_set(
    bars: pl.DataFrame, fold: Fold, timeframe: str
) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """(training rows with their `action` label, test rows, feature columns) of one fold. A training row
    is used only if its label window ends by the fold's training end (`label_end`, the last instant the
    label reads); the fold's purge (>= the label horizon) keeps every label out of the test window."""
    labels = DatasetConfig()
    table = lgbm_features(bars, timeframe).with_columns(
        volatility_scaled(pl.col("forward_return"), pl.col("atr_pct"), labels.horizon, "1h").alias("score")
    )
    columns = [
        c
        for c in table.columns
        if c not in ("symbol", "timestamp", "at", "label_end", "forward_return", "score")
    ]
    train = table.filter(
        (pl.col("timestamp") >= fold.train_start)
        & (pl.col("label_end") <= fold.train_end)
        & pl.col("score").is_finite()
    )
    if train.height < 100:
        raise ValueError(
            f"lgbm {fold.key}: {train.height} training rows with labels in [{fold.train_start:%Y-%m-%d %H:%M}, "
            f"{fold.train_end:%Y-%m-%d %H:%M}), too few for LightGBM (at least 100): a longer training span "
            "(backtest --train-days, or an earlier start)"
        )
    thresholds = fit_thresholds(train["score"], labels.sell_share, labels.buy_share)
    train = train.with_columns(action_expr(pl.col("score"), thresholds).alias("action"))
    test = table.filter((pl.col("timestamp") >= fold.test_start) & (pl.col("timestamp") < fold.test_end))
    return train, test, columns


def lgbm_long(
    bars: pl.DataFrame,
    fold: Fold,
    timeframe: str,
    *,
    fee_bps: float = 25.0,  # noqa: ARG001 - kept for callers; the LLM's labels do not use fees
    seed: int = 0,
) -> pd.DataFrame:
    """Train a LightGBM classifier on the fold's training window with the fine-tuned LLM's labels and
    return its long/flat signal on the test window."""
    import lightgbm as lgb

    train, test, columns = lgbm_training_set(bars, fold, timeframe)
    if test.is_empty():  # a test window past the data: nothing to predict, so never long
        return pd.DataFrame(dtype=bool)
    y = train["action"].replace_strict({c: i for i, c in enumerate(LGBM_CLASSES)}, return_dtype=pl.Int8)
    y = y.to_numpy()
    model = lgb.LGBMClassifier(
        n_estimators=200,
        learning_rate=0.05,
        num_leaves=15,
        min_child_samples=50,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.8,
        random_state=seed,
        verbose=-1,
        n_jobs=2,
    )
    model.fit(train.select(columns).to_numpy(), y)
    prob = model.predict_proba(test.select(columns).to_numpy())
    predicted = prob.argmax(axis=1)
    wants = np.where(
        (predicted == 2) & (prob[:, 2] >= LGBM_MIN_BUY_PROBABILITY),
        1.0,
        np.where(predicted == 0, 0.0, np.nan),
    )
    signal = test.select("symbol", "timestamp").with_columns(pl.Series("wants", wants))
    # HOLD keeps the state: carry the last BUY/SELL forward per symbol, flat before the first one.
    return wide(signal, "wants").ffill().fillna(0.0).astype(bool)


def signal_baseline(name: str, close: pd.DataFrame, *, fast: int = 9, slow: int = 21) -> pd.DataFrame:
    if name == "buy_hold":
        return buy_hold_long(close)
    if name == "ema_cross":
        return ema_cross_long(close, fast, slow)
    if name == "rsi":
        return rsi_long(close)
    raise ValueError(f"unknown signal baseline {name!r}")

"""The baselines every model must beat, as long/flat signals at each bar's close (the engine fills them
at the next open): buy-and-hold, `ema_cross`, an RSI mean-reversion rule, and a LightGBM classifier
trained per fold on the same causal features. `RuleBased` (a `DecisionProvider`) runs through the risk
engine with `engine.run_policy` like any LLM."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl

from crypto_pipeline.backtest.engine import ema_cross_long, wide
from crypto_pipeline.backtest.folds import Fold
from crypto_pipeline.features import FEATURE_COLUMNS, compute_features

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
LGBM_HORIZON_BARS = 4  # label: the return over the next 4 bars, net of a round trip's fees, is positive
LGBM_THRESHOLD = 0.55


def lgbm_features(bars: pl.DataFrame, timeframe: str) -> pl.DataFrame:
    """Causal features (the project's `compute_features`, proved free of look-ahead) and the label."""
    feats = compute_features(bars, timeframe)
    scale_free = [c for c in FEATURE_COLUMNS if not c.startswith(("ema_", "macd", "atr_"))]
    fwd = (
        pl.col("open").shift(-1 - LGBM_HORIZON_BARS).over("symbol") / pl.col("open").shift(-1).over("symbol")
        - 1
    )
    return feats.select(
        "symbol",
        "timestamp",
        *scale_free,
        (pl.col("macd_hist") / pl.col("close")).alias("macd_hist_rel"),
        (pl.col("atr_14") / pl.col("close")).alias("atr_rel"),
        fwd.alias("forward_return"),
    )


def lgbm_long(
    bars: pl.DataFrame,
    fold: Fold,
    timeframe: str,
    *,
    fee_bps: float = 25.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Train a LightGBM classifier on the fold's training window and return its long/flat signal on
    the test window. A training row is used only if its label (which reads `LGBM_HORIZON_BARS + 1` bars
    ahead) is known by the training window's end: the fold's purge keeps it out of the test window."""
    import lightgbm as lgb

    table = lgbm_features(bars, timeframe)
    columns = [c for c in table.columns if c not in ("symbol", "timestamp", "forward_return")]
    step = table.sort("symbol", "timestamp")["timestamp"].diff().drop_nulls().median()
    horizon = step * (LGBM_HORIZON_BARS + 2)
    train = table.filter(
        (pl.col("timestamp") >= fold.train_start)
        & (pl.col("timestamp") + horizon <= fold.train_end)
        & pl.col("forward_return").is_not_null()
    )
    if train.height < 100:
        raise ValueError(f"{fold.key}: {train.height} training rows, too few for LightGBM")
    label = (train["forward_return"] > 2 * fee_bps / 10_000).cast(pl.Int8).to_numpy()
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
    model.fit(train.select(columns).to_numpy(), label)
    test = table.filter((pl.col("timestamp") >= fold.test_start) & (pl.col("timestamp") < fold.test_end))
    prob = model.predict_proba(test.select(columns).to_numpy())[:, 1]
    signal = test.select("symbol", "timestamp").with_columns(pl.Series("long", prob > LGBM_THRESHOLD))
    return wide(signal, "long").fillna(False).astype(bool)


def signal_baseline(name: str, close: pd.DataFrame, *, fast: int = 9, slow: int = 21) -> pd.DataFrame:
    if name == "buy_hold":
        return buy_hold_long(close)
    if name == "ema_cross":
        return ema_cross_long(close, fast, slow)
    if name == "rsi":
        return rsi_long(close)
    raise ValueError(f"unknown signal baseline {name!r}")

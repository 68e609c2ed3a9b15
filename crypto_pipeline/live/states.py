"""Market states from the live buffer, by the code that builds them for datasets and backtests:
base bars -> `resample_bars` (as the warehouse's `bars`) -> `compute_features` -> `market_state_table`
-> `state_from_row`. Only bars closed by the decision time are read."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import polars as pl

from crypto_pipeline.features import compute_features
from crypto_pipeline.market.resample import resample_bars
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.state import STATE_TIMEFRAMES, MarketState
from crypto_pipeline.state.build import market_state_table, state_from_row


def features_from_bars(bars: pl.DataFrame, base: Timeframe) -> pl.DataFrame:
    """The long features table (a `timeframe` column) of every state timeframe the base bars can make."""
    frames = []
    for name in STATE_TIMEFRAMES:
        tf = Timeframe.parse(name)
        if tf.duration < base.duration or tf.duration % base.duration:
            continue
        if tf is base:
            tf_bars = bars
        else:
            tf_bars = resample_bars(bars, base, tf).drop("timeframe", "bar_count")
        if tf_bars.is_empty():
            continue
        computed = compute_features(tf_bars.select(bars.columns), tf)
        frames.append(computed.with_columns(pl.lit(tf.value).alias("timeframe")))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def state_table_at(bars: pl.DataFrame, base: Timeframe, symbols: Sequence[str], at: datetime) -> pl.DataFrame:
    """The rows of `market_state_table` for `symbols` at `at`, from the bars closed by then."""
    closed = bars.filter(pl.col("timestamp") + base.duration <= at)
    features = features_from_bars(closed, base)
    if features.is_empty():
        return pl.DataFrame()
    return market_state_table(features, pl.DataFrame({"symbol": list(symbols), "at": [at] * len(symbols)}))


def rolling_state_table(
    bars: pl.DataFrame, base: Timeframe, symbols: Sequence[str], times: Sequence[datetime], lookback_days: int
) -> pl.DataFrame:
    """The states a live session with `lookback_days` of history would build at each of `times`: at
    each, the newest `lookback_days` of base bars closed by then (the live buffer's window), through
    `state_table_at`. A backtest run on this table shows the model the live loop's prompts."""
    window = base.bars_per(timedelta(days=lookback_days))
    tables = []
    for at in times:
        closed = bars.filter(pl.col("timestamp") + base.duration <= at)
        recent = closed.sort("timestamp").group_by("symbol", maintain_order=True).tail(window)
        table = state_table_at(recent, base, symbols, at)
        if not table.is_empty():
            tables.append(table)
    return pl.concat(tables, how="diagonal_relaxed") if tables else pl.DataFrame()


def states_at(
    bars: pl.DataFrame, base: Timeframe, symbols: Sequence[str], at: datetime
) -> tuple[dict[str, MarketState], dict[str, str]]:
    """The state of each symbol at `at` from bars closed by then; and, for symbols with none, why."""
    table = state_table_at(bars, base, symbols, at)
    if table.is_empty():
        return {}, {s: f"no closed bars by {at:%Y-%m-%d %H:%M}" for s in symbols}
    states: dict[str, MarketState] = {}
    missing: dict[str, str] = {}
    for row in table.iter_rows(named=True):
        try:
            states[row["symbol"]] = state_from_row(row)
        except ValueError as exc:
            missing[row["symbol"]] = str(exc)
    for symbol in symbols:
        if symbol not in states and symbol not in missing:
            missing[symbol] = f"no closed bars by {at:%Y-%m-%d %H:%M}"
    return states, missing

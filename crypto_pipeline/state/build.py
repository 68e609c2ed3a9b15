"""Building MarketStates from the long features table: `market_state_table` (flat rows, one per symbol
and decision time), `state_from_row`, and `build_market_states` (the warehouse's `market_states` table,
each row with its prompt text, prompt version and hash).

A state is built only from bars that had CLOSED by the decision time `at`: a bar opening at t with
duration d contributes from t + d on. The same code builds states for datasets, backtests and the live
loop, so a prompt in training is byte-for-byte what the model would have seen live.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from crypto_pipeline.config import get_settings
from crypto_pipeline.features import compute_features
from crypto_pipeline.llm.prompts import PROMPT_VERSION, build_user_prompt, prompt_hash
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.quality import CheckedReport, check_no_lookahead
from crypto_pipeline.state import INDICATOR_FIELDS, STATE_TIMEFRAMES, MarketState, TimeframeIndicators
from crypto_pipeline.timeutil import as_utc

if TYPE_CHECKING:
    from crypto_pipeline.ingest import DateLike
    from crypto_pipeline.warehouse import Warehouse


# --- building states from features ---------------------------------------------------------------


def _indicator_exprs() -> list[pl.Expr]:
    """Scale-free indicator columns from the raw feature columns of `crypto_pipeline.features`."""
    pct = 100.0
    close = pl.col("close")
    return [
        pl.col("rsi_14").alias("rsi_14"),
        (pl.col("macd_hist") / close * pct).alias("macd_hist_pct"),
        ((pl.col("ema_9") / pl.col("ema_21") - 1) * pct).alias("ema_9_vs_21_pct"),
        ((close / pl.col("ema_50") - 1) * pct).alias("close_vs_ema_50_pct"),
        ((close / pl.col("ema_200") - 1) * pct).alias("close_vs_ema_200_pct"),
        (pl.col("atr_14") / close * pct).alias("atr_pct"),
        pl.col("bb_pctb_20").alias("bb_pctb"),
        ((close / pl.col("open") - 1) * pct).alias("change_pct"),
    ]


def _closed_rows(features: pl.DataFrame, timeframe: str) -> pl.DataFrame:
    """One timeframe's feature rows keyed by the time their bar closed."""
    tf = Timeframe.parse(timeframe)
    frame = features.filter(pl.col("timeframe") == tf.value)
    return frame.with_columns((pl.col("timestamp") + tf.duration).alias("bar_close")).sort(
        "symbol", "bar_close"
    )


def market_state_table(
    features: pl.DataFrame,
    decision_points: pl.DataFrame,
    timeframes: Sequence[str] = STATE_TIMEFRAMES,
    price_timeframe: str | None = None,
) -> pl.DataFrame:
    """Flat market states, one row per (symbol, at) of `decision_points`.

    `features` is the long features table (a `timeframe` column, one row per symbol, timeframe and bar).
    Every value joined to a row at time `at` comes from a bar whose close is <= `at` (an as-of join on
    close times), which is what makes states free of look-ahead. A timeframe whose last closed bar is more
    than two bars old at `at` (a data gap) gives nulls rather than stale values.
    """
    available = [tf for tf in timeframes if features.filter(pl.col("timeframe") == tf).height > 0]
    if not available:
        raise ValueError(f"features hold none of the timeframes {list(timeframes)}")
    price_tf = price_timeframe or available[0]
    points = (
        decision_points.select(pl.col("symbol").cast(pl.String), pl.col("at").cast(pl.Datetime("us", "UTC")))
        .unique()
        .sort("symbol", "at")
    )
    out = points.sort("at")

    # Price, short-horizon changes and volumes come from the finest timeframe.
    price_rows = _closed_rows(features, price_tf)
    per_day = Timeframe.parse(price_tf).bars_per(timedelta(days=1))
    quote_volume = pl.col("volume") * pl.col("close")
    price_rows = price_rows.with_columns(
        quote_volume.rolling_sum(per_day).over("symbol").alias("volume_24h"),
        (
            quote_volume.rolling_sum(per_day).over("symbol")
            / (quote_volume.rolling_sum(7 * per_day).shift(per_day).over("symbol") / 7)
        ).alias("volume_vs_avg_7d"),
    ).select(
        "symbol",
        pl.col("bar_close").alias("price_bar_close"),
        pl.col("close").alias("price"),
        (pl.col("ret_1h") * 100).alias("change_1h"),
        (pl.col("ret_24h") * 100).alias("change_24h"),
        "volume_24h",
        "volume_vs_avg_7d",
    )
    out = out.join_asof(
        price_rows.sort("price_bar_close"),
        left_on="at",
        right_on="price_bar_close",
        by="symbol",
        strategy="backward",
        tolerance=2 * Timeframe.parse(price_tf).duration,
        check_sortedness=False,  # sorted by close time above; polars cannot verify it per group
    )

    for tf in available:
        rows = _closed_rows(features, tf).select(
            "symbol",
            pl.col("bar_close").alias(f"bar_close_{tf}"),
            *[e.name.suffix(f"_{tf}") for e in _indicator_exprs()],
        )
        out = out.join_asof(
            rows.sort(f"bar_close_{tf}"),
            left_on="at",
            right_on=f"bar_close_{tf}",
            by="symbol",
            strategy="backward",
            check_sortedness=False,
            tolerance=2 * Timeframe.parse(tf).duration,
        )
    # Indicators are undefined before warm-up (NaN from a ratio of nulls): carry them as nulls.
    float_cols = [c for c, t in out.schema.items() if t == pl.Float64]
    out = out.with_columns(
        [pl.when(pl.col(c).is_nan()).then(None).otherwise(pl.col(c)).alias(c) for c in float_cols]
    )
    return out.sort("symbol", "at")


def state_from_row(row: dict[str, Any], timeframes: Iterable[str] = STATE_TIMEFRAMES) -> MarketState:
    """A `MarketState` from one row of `market_state_table`."""
    if row.get("price") is None:
        raise ValueError(f"no closed bar for {row['symbol']} at or before {row['at']}")
    per_tf: dict[str, TimeframeIndicators] = {}
    for tf in timeframes:
        close = row.get(f"bar_close_{tf}")
        if close is None:
            continue
        per_tf[tf] = TimeframeIndicators(
            bar_close=close, **{f: _clean(row.get(f"{f}_{tf}")) for f in INDICATOR_FIELDS}
        )
    return MarketState(
        symbol=row["symbol"],
        at=row["at"],
        price=row["price"],
        change_1h=_clean(row.get("change_1h")),
        change_24h=_clean(row.get("change_24h")),
        volume_24h=_clean(row.get("volume_24h")),
        volume_vs_avg_7d=_clean(row.get("volume_vs_avg_7d")),
        timeframes=per_tf,
    )


def build_market_state(features: pl.DataFrame, symbol: str, at: datetime) -> MarketState:
    """The state of `symbol` at decision time `at` from the long features table."""
    at = as_utc(at)
    table = market_state_table(
        features.filter(pl.col("symbol") == symbol), pl.DataFrame({"symbol": [symbol], "at": [at]})
    )
    return state_from_row(table.row(0, named=True))


def states_from_table(table: pl.DataFrame) -> list[MarketState]:
    return [state_from_row(row) for row in table.iter_rows(named=True)]


# --- the market_states table ----------------------------------------------------------------------

DEFAULT_DECISION_TIMEFRAME = "1h"
DEFAULT_STATES_LOOKBACK_DAYS = 10  # history needed for the 7-day volume averages
#: The window of base bars a backtest's market state is built from: a live session's default history
#: (`live.config.LiveConfig.lookback_days`), so that a backtest shows the model live's prompt for the hour.
STATE_LOOKBACK_DAYS = 30


@dataclass(kw_only=True)
class MarketStatesReport(CheckedReport):
    decision_timeframe: str
    states: int = 0
    prompt_version: str = ""
    example_prompt: str = ""

    def summary(self) -> str:
        return (
            f"market states {self.first_day}..{self.last_day} for {len(self.symbols)} symbol(s) at every "
            f"{self.decision_timeframe} close: {self.states:,} states ({self.prompt_version}) in {self.seconds:.1f} s"
        )


def decision_points(
    features: pl.DataFrame, decision_timeframe: str, start: datetime, end: datetime
) -> pl.DataFrame:
    """(symbol, at): the close of every `decision_timeframe` bar that opens in [start, end)."""
    tf = Timeframe.parse(decision_timeframe)
    return features.filter(
        (pl.col("timeframe") == tf.value) & (pl.col("timestamp") >= start) & (pl.col("timestamp") < end)
    ).select("symbol", (pl.col("timestamp") + tf.duration).alias("at"))


def with_prompts(table: pl.DataFrame, decision_timeframe: str) -> pl.DataFrame:
    """`market_state_table` rows with the prompt each state gives (`build_user_prompt(state)`, byte for
    byte what `LocalLLM` sees), its `prompt_version` and `prompt_hash`, and the decision bar's key."""
    tf = Timeframe.parse(decision_timeframe)
    prompts = [build_user_prompt(state) for state in states_from_table(table)]
    return table.with_columns(
        pl.Series("prompt", prompts, dtype=pl.String),
        pl.lit(PROMPT_VERSION).alias("prompt_version"),
        pl.Series("prompt_hash", [prompt_hash(p) for p in prompts], dtype=pl.String),
        (pl.col("at") - tf.duration).alias("timestamp"),
        pl.lit(tf.value).alias("timeframe"),
    )


def build_market_states(
    warehouse: Warehouse,
    symbols: Sequence[str] | str,
    start: DateLike,
    end: DateLike,
    *,
    decision_timeframe: str = DEFAULT_DECISION_TIMEFRAME,
    lookback_days: int = DEFAULT_STATES_LOOKBACK_DAYS,
    audit_cuts: int = 3,
    build: Callable[[pl.DataFrame, pl.DataFrame], pl.DataFrame] = market_state_table,
) -> MarketStatesReport:
    """One state per symbol at every close of a `decision_timeframe` bar opening in the days
    `start`..`end` (both included), from the warehouse's `features`; upserted into `market_states`.

    The report carries the `no_lookahead` check: `quality.check_no_lookahead` re-runs `build` (the state
    builder, `market_state_table` unless a test swaps it) at `audit_cuts` sampled decision times.
    """
    # Imported here: `ingest` loads alpaca-py (through `market.sources`), which building states never uses.
    from crypto_pipeline.ingest import normalize_symbols, resolve_range

    started = time.perf_counter()
    wanted = normalize_symbols(symbols)
    lo, hi = resolve_range(start, end)
    decision_tf = Timeframe.parse(decision_timeframe).value
    feats = warehouse.read("features", symbols=wanted, start=lo - timedelta(days=lookback_days), end=hi)
    points = decision_points(feats, decision_tf, lo, hi) if feats.height else pl.DataFrame()
    report = MarketStatesReport(
        symbols=wanted,
        decision_timeframe=decision_tf,
        first_day=lo.date(),
        last_day=(hi - timedelta(microseconds=1)).date(),
        prompt_version=PROMPT_VERSION,
    )
    if points.is_empty():
        report.checks = [check_no_lookahead(feats, pl.DataFrame({"at": []}), build=build)]
        return report
    table = build(feats, points).filter(pl.col("price").is_not_null())
    table = with_prompts(table, decision_tf)
    warehouse.upsert("market_states", table)
    report.states = table.height
    report.example_prompt = table["prompt"][-1] if table.height else ""
    report.checks = [check_no_lookahead(feats, points, build=build, cuts=audit_cuts)]
    report.seconds = time.perf_counter() - started
    return report


# --- formatting helpers --------------------------------------------------------------------------


def _clean(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


# --- states straight from recorded files (the `decide` command, examples, tests) -----------------


def build_market_state_from_recorded(symbol: str, at: datetime, settings: Any = None) -> MarketState:
    """The state of `symbol` at `at`, computed in memory from the recorded bars (`RecordedSource`).

    Only bars that had closed by `at` are read (the filter is pushed into the Parquet scan), so the
    state cannot see the future even by accident. Timeframes missing from the recording are left out.
    """
    # Imported here: `market.sources` loads alpaca-py, which reading recorded Parquet files never uses.
    from crypto_pipeline.market.sources import RecordedSource

    settings = settings or get_settings()
    at = as_utc(at)
    source = RecordedSource(settings.market_data_dir)
    recorded = set(source.timeframes())
    frames = []
    for tf_name in STATE_TIMEFRAMES:
        tf = Timeframe.parse(tf_name)
        if tf not in recorded:
            continue
        # fetch_bars reads [start, end) of bar open times: a bar has closed by `at` if it opened by at - d.
        closed_by_at = at - tf.duration + timedelta(microseconds=1)
        bars = source.fetch_bars([symbol], tf, datetime(1970, 1, 1, tzinfo=UTC), closed_by_at)
        if bars.height:
            frames.append(compute_features(bars, tf).with_columns(pl.lit(tf.value).alias("timeframe")))
    if not frames:
        raise ValueError(
            f"no recorded bars for {symbol!r} closed by {at:%Y-%m-%d %H:%M} in {settings.market_data_dir}"
        )
    return build_market_state(pl.concat(frames, how="diagonal_relaxed"), symbol, at)

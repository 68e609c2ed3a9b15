"""Resampling clean bars to a coarser timeframe, emitting only periods that are over.

Periods are aligned to the UTC epoch grid (15m, 1h, 4h at 00/04/08... UTC) and to UTC days for 1d.
A period is emitted only once it is complete in time: its end (open + target duration) is at or
before the close of the last source bar known for that symbol (or `complete_until`). So no partial
bar, which would carry prices from after its own timestamp's window is known, can leak the future.
A period with missing source bars is still emitted; `bar_count` says how many source bars formed it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import polars as pl

from crypto_pipeline.market.clean import is_sorted_by_symbol_time
from crypto_pipeline.market.schema import INGESTED_AT, TIMESTAMP_DTYPE
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.timeutil import as_utc

RESAMPLED_COLUMNS: tuple[str, ...] = (
    "symbol",
    "timeframe",
    "timestamp",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "trade_count",
    "vwap",
    "bar_count",
)


def _horizons(
    frame: pl.DataFrame, source: Timeframe, complete_until: datetime | Mapping[str, datetime] | None
) -> pl.DataFrame:
    """Per symbol, the instant up to which periods are complete."""
    last_close = frame.group_by("symbol").agg((pl.col("timestamp").max() + source.duration).alias("_horizon"))
    if complete_until is None:
        return last_close
    if isinstance(complete_until, datetime):
        return last_close.with_columns(pl.lit(as_utc(complete_until), TIMESTAMP_DTYPE).alias("_horizon"))
    given = pl.DataFrame(
        {"symbol": list(complete_until), "_given": [as_utc(v) for v in complete_until.values()]},
        schema={"symbol": pl.Utf8, "_given": TIMESTAMP_DTYPE},
    )
    return (
        last_close.join(given, on="symbol", how="left")
        .with_columns(pl.coalesce("_given", "_horizon").alias("_horizon"))
        .drop("_given")
    )


def resample_bars(
    df: pl.DataFrame,
    source_tf: str | Timeframe,
    target_tf: str | Timeframe,
    *,
    complete_until: datetime | Mapping[str, datetime] | None = None,
) -> pl.DataFrame:
    """Aggregate clean `source_tf` bars of any number of symbols into `target_tf` bars.

    open = first, high = max, low = min, close = last, volume = sum, trade_count = sum (null if any
    source bar lacks it), vwap = volume-weighted mean of the source vwaps (null if any lacks it or the
    volume is 0), bar_count = number of base bars (summed when the input is itself resampled, so
    5m -> 1h -> 4h chains equal 5m -> 4h), `_ingested_at` = the latest of its sources (when
    the input has that column: the bar is known only once all its parts are).

    `complete_until` overrides the completeness horizon: one instant for every symbol, or one per
    symbol (e.g. the close of the newest bar the source has, including bars after this frame).
    Returns columns `RESAMPLED_COLUMNS` (+ `_ingested_at`), sorted by symbol then time.
    """
    source, target = Timeframe.parse(source_tf), Timeframe.parse(target_tf)
    if target.duration <= source.duration or target.duration % source.duration:
        raise ValueError(
            f"cannot resample {source.value} bars to {target.value}: the target must be a whole multiple "
            "of the source timeframe"
        )
    has_ingested = INGESTED_AT in df.columns
    if df.is_empty():
        schema = {
            **{c: df.schema.get(c, pl.Float64) for c in RESAMPLED_COLUMNS},
            "symbol": pl.Utf8,
            "timeframe": pl.Utf8,
            "timestamp": TIMESTAMP_DTYPE,
            "bar_count": pl.Int32,
        }
        if has_ingested:
            schema[INGESTED_AT] = TIMESTAMP_DTYPE
        return pl.DataFrame(schema=schema)

    step_us = int(target.duration.total_seconds()) * 1_000_000
    # Integer flooring on the epoch equals dt.truncate for these UTC-aligned grids (UTC has no DST).
    period = (pl.col("timestamp").dt.epoch("us") // step_us * step_us).cast(TIMESTAMP_DTYPE)
    # Sorted input grouped in order comes out sorted: no sort of the (string, time) keys afterwards,
    # which measured about half the cost of a 5m -> 15m resample of the 2024 set.
    frame = df if is_sorted_by_symbol_time(df) else df.sort("symbol", "timestamp")
    frame = frame.with_columns(period.alias("_period"), (pl.col("vwap") * pl.col("volume")).alias("_pv"))
    aggregations = [
        pl.col("open").first(),
        pl.col("high").max(),
        pl.col("low").min(),
        pl.col("close").last(),
        pl.col("volume").sum(),
        pl.col("trade_count").sum(),
        pl.col("trade_count").null_count().alias("_tc_nulls"),
        pl.col("_pv").sum(),
        pl.col("vwap").null_count().alias("_vwap_nulls"),
        # Input that is itself resampled carries bar_count, so coarser timeframes can be chained.
        (pl.col("bar_count").sum() if "bar_count" in df.columns else pl.len())
        .cast(pl.Int32)
        .alias("bar_count"),
    ]
    if has_ingested:
        aggregations.append(pl.col(INGESTED_AT).max())
    horizons = _horizons(frame, source, complete_until)
    horizon = pl.col("symbol").replace_strict(
        horizons["symbol"], horizons["_horizon"], return_dtype=TIMESTAMP_DTYPE
    )
    out = (
        frame.group_by("symbol", "_period", maintain_order=True)
        .agg(aggregations)
        .filter(pl.col("_period") + target.duration <= horizon)
        .with_columns(
            pl.when(pl.col("_tc_nulls") == 0)
            .then(pl.col("trade_count"))
            .otherwise(None)
            .alias("trade_count"),
            pl.when((pl.col("_vwap_nulls") == 0) & (pl.col("volume") > 0))
            .then(pl.col("_pv") / pl.col("volume"))
            .otherwise(None)
            .alias("vwap"),
            pl.lit(target.value).alias("timeframe"),
        )
        .rename({"_period": "timestamp"})
    )
    return out.select([*RESAMPLED_COLUMNS, *([INGESTED_AT] if has_ingested else [])])

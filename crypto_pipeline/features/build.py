"""`build_features`: the `features` table of whole UTC days, computed from the warehouse's `bars`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import polars as pl

from crypto_pipeline.features.compute import compute_features, warmup_bars
from crypto_pipeline.quality import CheckedReport, check_warm_features

if TYPE_CHECKING:
    from crypto_pipeline.ingest import DateLike
    from crypto_pipeline.warehouse import Warehouse

DEFAULT_LOOKBACK_DAYS = 400  # history read before the range so slow indicators (EMA-200 on 1d) warm up


@dataclass(kw_only=True)
class FeaturesReport(CheckedReport):
    timeframes: list[str]
    rows: int = 0
    warm_rows: int = 0

    def summary(self) -> str:
        return (
            f"features {self.first_day}..{self.last_day} for {len(self.symbols)} symbol(s), "
            f"{'/'.join(self.timeframes)}: {self.rows:,} rows ({self.warm_rows:,} warm) in {self.seconds:.1f} s"
        )


def build_features(
    warehouse: Warehouse,
    symbols: Sequence[str] | str,
    timeframes: Sequence[str],
    start: DateLike,
    end: DateLike,
    *,
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
    max_null_ratio: float = 0.02,
) -> FeaturesReport:
    """Compute the features of every timeframe's bars over the days `start`..`end` (both included) and
    upsert them; `lookback_days` of earlier bars are read as history but not written.

    The report carries the `no_nan_after_warmup` check of the rows built (see `quality.check_warm_features`).
    """
    # Imported here: `crypto_pipeline.features` stays a light import for those who only compute features.
    from crypto_pipeline.ingest import normalize_symbols, parse_timeframe, resolve_range

    started = time.perf_counter()
    wanted = normalize_symbols(symbols)
    lo, hi = resolve_range(start, end)
    tfs = [parse_timeframe(tf).value for tf in timeframes]
    frames = []
    for tf in tfs:
        history = warehouse.read(
            "bars", symbols=wanted, timeframes=[tf], start=lo - timedelta(days=lookback_days), end=hi
        )
        if history.is_empty():
            continue
        computed = compute_features(history.drop("timeframe"), tf).with_columns(pl.lit(tf).alias("timeframe"))
        frames.append(computed.filter(pl.col("timestamp") >= lo))
    table = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    if not table.is_empty():
        warehouse.upsert("features", table)
    return FeaturesReport(
        symbols=wanted,
        timeframes=tfs,
        first_day=lo.date(),
        last_day=(hi - timedelta(microseconds=1)).date(),
        rows=table.height,
        warm_rows=table.filter(pl.col("warm")).height if table.height else 0,
        seconds=time.perf_counter() - started,
        checks=[check_warm_features(table, warmup_bars, max_null_ratio=max_null_ratio)],
    )

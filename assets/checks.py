"""Turn the library's data-quality checks into Dagster asset-check results and metadata."""

from __future__ import annotations

import dagster as dg
import polars as pl

from crypto_pipeline.market import clean


def _result(name: str, outcome: clean.CheckOutcome) -> dg.AssetCheckResult:
    metadata: dict[str, object] = {"violations": outcome.count}
    if outcome.sample is not None and outcome.sample.height:
        metadata["sample"] = dg.MetadataValue.md(outcome.sample.head(10).to_pandas().to_markdown(index=False))
    return dg.AssetCheckResult(
        check_name=name, passed=outcome.passed, metadata=metadata, severity=dg.AssetCheckSeverity.ERROR
    )


def check_results_for_bars(
    df: pl.DataFrame, base_timeframe: str, max_gap_ratio: float
) -> list[dg.AssetCheckResult]:
    base = df.filter(pl.col("timeframe") == base_timeframe) if "timeframe" in df.columns else df
    return [
        _result("unique_symbol_timestamp", clean.check_unique(df)),
        _result("ohlc_consistent", clean.check_ohlc(df)),
        _result("monotonic_time", clean.check_monotonic(df)),
        _result("gap_ratio", clean.check_gaps(base, base_timeframe, max_gap_ratio)),
    ]


def warehouse_metadata(df: pl.DataFrame) -> dict[str, object]:
    """Row counts per timeframe and the time range: what a user looks for first in the UI."""
    if df.is_empty():
        return {"rows": 0}
    per_tf = df.group_by("timeframe").len().sort("timeframe")
    return {
        "rows": df.height,
        "symbols": dg.MetadataValue.text(", ".join(sorted(df["symbol"].unique().to_list()))),
        "first_bar": str(df["timestamp"].min()),
        "last_bar": str(df["timestamp"].max()),
        "rows_per_timeframe": dg.MetadataValue.json(
            dict(zip(per_tf["timeframe"], per_tf["len"], strict=True))
        ),
    }

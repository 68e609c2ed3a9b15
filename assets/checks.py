"""Turn the library's reports and data-quality checks into Dagster metadata and asset-check results."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime

import dagster as dg
import polars as pl

from crypto_pipeline.market import clean


def check_result(check_name: str, outcome: clean.CheckResult) -> dg.AssetCheckResult:
    metadata: dict[str, object] = {
        "offending": outcome.count,
        "checked": outcome.total,
        "description": outcome.description,
    }
    if outcome.sample.height:
        metadata["sample"] = dg.MetadataValue.json(outcome.sample_records())
    return dg.AssetCheckResult(
        check_name=check_name, passed=outcome.passed, metadata=metadata, severity=dg.AssetCheckSeverity.ERROR
    )


def check_results_for_bars(
    df: pl.DataFrame, base_timeframe: str, max_gap_ratio: float, start: datetime, end: datetime
) -> list[dg.AssetCheckResult]:
    base = df.filter(pl.col("timeframe") == base_timeframe)
    return [
        check_result("unique_symbol_timestamp", clean.check_unique(df)),
        check_result("ohlc_consistent", clean.check_ohlc(df)),
        check_result("monotonic_time", clean.check_monotonic(df)),
        check_result(
            "gap_ratio",
            clean.check_gaps(base, base_timeframe, max_gap_ratio=max_gap_ratio, start=start, end=end),
        ),
    ]


def report_metadata(report: object) -> dict[str, object]:
    """A library report dataclass as Dagster metadata (numbers stay numbers, the rest becomes JSON/text)."""
    metadata: dict[str, object] = {}
    for name, value in dataclasses.asdict(report).items():
        if isinstance(value, bool | int | float | str):
            metadata[name] = value
        elif isinstance(value, datetime | date):
            metadata[name] = value.isoformat()
        else:
            metadata[name] = dg.MetadataValue.json(value)
    if hasattr(report, "summary"):
        metadata["summary"] = dg.MetadataValue.md(f"```\n{report.summary()}\n```")
    return metadata


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

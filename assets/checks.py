"""Library reports and data-quality checks as Dagster metadata, check specs and asset-check results."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime

import dagster as dg
import polars as pl

from crypto_pipeline.quality import CheckResult, checks_for


def check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    """The blocking checks of one asset, named and described by `crypto_pipeline.quality`."""
    return [
        dg.AssetCheckSpec(check.name, asset=asset, blocking=True, description=check.description)
        for check in checks_for(asset)
    ]


def check_result(outcome: CheckResult) -> dg.AssetCheckResult:
    metadata: dict[str, object] = {"offending": outcome.count, "checked": outcome.total}
    if outcome.sample.height:
        metadata["sample"] = dg.MetadataValue.json(outcome.sample_records())
    return dg.AssetCheckResult(
        check_name=outcome.name,
        passed=outcome.passed,
        metadata=metadata,
        severity=dg.AssetCheckSeverity.ERROR,
    )


def report_metadata(report: object) -> dict[str, object]:
    """A library report dataclass as Dagster metadata (numbers stay numbers, the rest becomes JSON/text);
    its `checks` become asset-check results instead (see `check_result`)."""
    metadata: dict[str, object] = {}
    for spec in dataclasses.fields(report):  # type: ignore[arg-type]
        name, value = spec.name, getattr(report, spec.name)
        if name == "checks":
            continue
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

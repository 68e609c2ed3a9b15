"""raw_bars → bars: ingestion from the configured source, then cleaning, quarantine and resampling."""

from datetime import date, timedelta

import dagster as dg
from pydantic import Field

from assets.checks import check_result, check_specs, report_metadata, warehouse_metadata
from assets.partitions import daily_asset
from assets.resources import MarketDataSourceResource, WarehouseResource
from crypto_pipeline.config import get_settings
from crypto_pipeline.ingest import build_bars, ingest_raw, resolve_range
from crypto_pipeline.quality import check_bars


class IngestConfig(dg.Config):
    symbols: list[str] | None = Field(default=None, description="Default: Settings.symbols.")
    base_timeframe: str | None = Field(default=None, description="Default: Settings.base_timeframe.")


class BarsConfig(dg.Config):
    symbols: list[str] | None = Field(default=None, description="Default: Settings.symbols.")
    base_timeframe: str | None = Field(default=None, description="Default: Settings.base_timeframe.")
    timeframes: list[str] | None = Field(default=None, description="Default: Settings.timeframes.")
    max_gap_ratio: float | None = Field(default=None, description="Default: Settings.max_gap_ratio.")


def partition_days(context: dg.AssetExecutionContext) -> tuple[date, date]:
    """The first and the last day (both included, UTC) of the partitions this run covers."""
    window = context.partition_time_window
    return window.start.date(), (window.end - timedelta(days=1)).date()


@daily_asset(
    group_name="market_data",
    kinds={"duckdb", "parquet", "alpaca"},
    description="Bars as the source delivered them (base timeframe), one Parquet file per timeframe and day.",
)
def raw_bars(
    context: dg.AssetExecutionContext,
    config: IngestConfig,
    warehouse: WarehouseResource,
    market_data_source: MarketDataSourceResource,
) -> dg.MaterializeResult:
    settings = get_settings()
    first, last = partition_days(context)
    report = ingest_raw(
        market_data_source.get(),
        warehouse.get(),
        symbols=config.symbols or settings.symbols,
        timeframe=config.base_timeframe or settings.base_timeframe,
        start=first,
        end=last,
        progress=False,
    )
    context.log.info(report.summary())
    return dg.MaterializeResult(
        metadata={**report_metadata(report), "source_kind": market_data_source.source_kind}
    )


@daily_asset(
    deps=[raw_bars],
    group_name="market_data",
    kinds={"duckdb", "parquet", "polars"},
    description="Clean bars: sorted, de-duplicated, gaps flagged, bad rows quarantined, resampled to 15m/1h/4h/1d.",
    check_specs=check_specs("bars"),
)
def bars(context: dg.AssetExecutionContext, config: BarsConfig, warehouse: WarehouseResource):
    settings = get_settings()
    first, last = partition_days(context)
    symbols = config.symbols or settings.symbols
    base = config.base_timeframe or settings.base_timeframe
    wh = warehouse.get()
    report = build_bars(
        wh,
        symbols=symbols,
        base_timeframe=base,
        target_timeframes=config.timeframes or settings.timeframes,
        start=first,
        end=last,
        progress=False,
    )
    context.log.info(report.summary())
    lo, hi = resolve_range(first, last)
    built = wh.read("bars", symbols=symbols, start=lo, end=hi)
    max_gap_ratio = settings.max_gap_ratio if config.max_gap_ratio is None else config.max_gap_ratio
    checks = check_bars(built, base, max_gap_ratio=max_gap_ratio, start=lo, end=hi)
    return dg.MaterializeResult(
        metadata={**report_metadata(report), **warehouse_metadata(built)},
        check_results=[check_result(c) for c in checks],
    )

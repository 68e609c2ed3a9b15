"""raw_bars → bars: ingestion from the configured source, then cleaning, quarantine and resampling."""

from datetime import datetime, timedelta

import dagster as dg
from pydantic import Field

from assets.checks import check_results_for_bars, report_metadata, warehouse_metadata
from assets.partitions import DAILY_PARTITIONS, SINGLE_RUN_BACKFILL
from assets.resources import MarketDataSourceResource, WarehouseResource
from crypto_pipeline.config import get_settings
from crypto_pipeline.ingest import build_bars, ingest_raw

_SETTINGS = get_settings()  # defaults shown in the launchpad; override per run


class IngestConfig(dg.Config):
    symbols: list[str] = Field(default=list(_SETTINGS.symbols))
    base_timeframe: str = Field(default=_SETTINGS.base_timeframe)


class BarsConfig(dg.Config):
    symbols: list[str] = Field(default=list(_SETTINGS.symbols))
    base_timeframe: str = Field(default=_SETTINGS.base_timeframe)
    timeframes: list[str] = Field(default=list(_SETTINGS.timeframes))
    max_gap_ratio: float = Field(default=_SETTINGS.max_gap_ratio)


def partition_days(context: dg.AssetExecutionContext) -> tuple[datetime, datetime]:
    """[first day, last day] (inclusive, UTC midnights) of the partitions this run covers."""
    window = context.partition_time_window
    return window.start, window.end - timedelta(days=1)


@dg.asset(
    partitions_def=DAILY_PARTITIONS,
    backfill_policy=SINGLE_RUN_BACKFILL,
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
    first, last = partition_days(context)
    report = ingest_raw(
        market_data_source.get(),
        warehouse.get(),
        symbols=config.symbols,
        timeframe=config.base_timeframe,
        start=first.date(),
        end=last.date(),
        progress=False,
    )
    context.log.info(report.summary())
    return dg.MaterializeResult(metadata={**report_metadata(report), "source_kind": market_data_source.kind})


@dg.asset(
    deps=[raw_bars],
    partitions_def=DAILY_PARTITIONS,
    backfill_policy=SINGLE_RUN_BACKFILL,
    group_name="market_data",
    kinds={"duckdb", "parquet", "polars"},
    description="Clean bars: sorted, de-duplicated, gaps flagged, bad rows quarantined, resampled to 15m/1h/4h/1d.",
    check_specs=[
        dg.AssetCheckSpec(name, asset="bars", blocking=True, description=desc)
        for name, desc in [
            ("unique_symbol_timestamp", "No two bars share (symbol, timeframe, timestamp)."),
            ("ohlc_consistent", "low <= open, close <= high; volume >= 0; prices > 0."),
            ("monotonic_time", "Timestamps strictly increase within each symbol and timeframe."),
            ("gap_ratio", "Missing base bars stay under the configured ratio."),
        ]
    ],
)
def bars(context: dg.AssetExecutionContext, config: BarsConfig, warehouse: WarehouseResource):
    first, last = partition_days(context)
    wh = warehouse.get()
    report = build_bars(
        wh,
        symbols=config.symbols,
        base_timeframe=config.base_timeframe,
        target_timeframes=config.timeframes,
        start=first.date(),
        end=last.date(),
        progress=False,
    )
    context.log.info(report.summary())
    end = last + timedelta(days=1)
    built = wh.read("bars", symbols=config.symbols, start=first, end=end)
    return dg.MaterializeResult(
        metadata={**report_metadata(report), **warehouse_metadata(built)},
        check_results=check_results_for_bars(built, config.base_timeframe, config.max_gap_ratio, first, end),
    )

"""bars → features → market_states: indicators per timeframe, then the snapshots the LLM sees."""

import dagster as dg
from pydantic import Field

from assets.checks import check_result, check_specs, report_metadata
from assets.market_data import bars, partition_days
from assets.partitions import daily_asset
from assets.resources import WarehouseResource
from crypto_pipeline.config import get_settings
from crypto_pipeline.features import build_features
from crypto_pipeline.features.build import DEFAULT_LOOKBACK_DAYS
from crypto_pipeline.plots import feature_charts
from crypto_pipeline.state.build import (
    DEFAULT_DECISION_TIMEFRAME,
    DEFAULT_STATES_LOOKBACK_DAYS,
    build_market_states,
)


class FeaturesConfig(dg.Config):
    symbols: list[str] | None = Field(default=None, description="Default: Settings.symbols.")
    timeframes: list[str] | None = Field(default=None, description="Default: Settings.timeframes.")
    lookback_days: int = Field(
        default=DEFAULT_LOOKBACK_DAYS,
        description="History read before the partition so slow indicators (EMA-200 on 1d) warm up.",
    )
    max_null_ratio: float = Field(
        default=0.02,
        description="Largest share of nulls (gaps break time windows) tolerated in a warm feature.",
    )


class MarketStatesConfig(dg.Config):
    symbols: list[str] | None = Field(default=None, description="Default: Settings.symbols.")
    decision_timeframe: str = Field(
        default=DEFAULT_DECISION_TIMEFRAME, description="A state is built at every close of this timeframe."
    )
    lookback_days: int = Field(
        default=DEFAULT_STATES_LOOKBACK_DAYS, description="History needed for 7-day volume averages."
    )


@daily_asset(
    deps=[bars],
    group_name="features",
    kinds={"polars", "parquet"},
    description="RSI, MACD, EMAs, ATR, Bollinger %B, volatility, returns, volume and VWAP measures per timeframe.",
    check_specs=check_specs("features"),
)
def features(context: dg.AssetExecutionContext, config: FeaturesConfig, warehouse: WarehouseResource):
    settings = get_settings()
    first, last = partition_days(context)
    symbols = config.symbols or settings.symbols
    wh = warehouse.get()
    report = build_features(
        wh,
        symbols,
        config.timeframes or settings.timeframes,
        first,
        last,
        lookback_days=config.lookback_days,
        max_null_ratio=config.max_null_ratio,
    )
    context.log.info(report.summary())
    charts = feature_charts(wh, symbols, last) if report.rows else {}
    return dg.MaterializeResult(
        metadata={
            **report_metadata(report),
            **{f"chart_{symbol}": dg.MetadataValue.path(str(path)) for symbol, path in charts.items()},
        },
        check_results=[check_result(c) for c in report.checks],
    )


@daily_asset(
    deps=[features],
    group_name="features",
    kinds={"polars", "parquet"},
    description="One market-state snapshot (its prompt text, prompt version and hash) per symbol at every decision-bar close.",
    check_specs=check_specs("market_states"),
)
def market_states(
    context: dg.AssetExecutionContext, config: MarketStatesConfig, warehouse: WarehouseResource
):
    first, last = partition_days(context)
    report = build_market_states(
        warehouse.get(),
        config.symbols or get_settings().symbols,
        first,
        last,
        decision_timeframe=config.decision_timeframe,
        lookback_days=config.lookback_days,
    )
    context.log.info(report.summary())
    metadata = report_metadata(report)
    metadata["example_prompt"] = dg.MetadataValue.md(f"```\n{report.example_prompt}\n```")
    return dg.MaterializeResult(metadata=metadata, check_results=[check_result(c) for c in report.checks])

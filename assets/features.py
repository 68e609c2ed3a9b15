"""bars → features → market_states: indicators per timeframe, then the snapshots the LLM sees."""

from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from assets.checks import check_result
from assets.market_data import bars, partition_days
from assets.partitions import DAILY_PARTITIONS, SINGLE_RUN_BACKFILL
from assets.resources import WarehouseResource
from crypto_pipeline.config import get_settings
from crypto_pipeline.feature_checks import check_warm_features
from crypto_pipeline.features import compute_features
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.plots import plot_features
from crypto_pipeline.state import STATE_TIMEFRAMES, market_state_table, states_from_table
from crypto_pipeline.warehouse import Warehouse

_SETTINGS = get_settings()  # defaults shown in the launchpad; override per run


class FeaturesConfig(dg.Config):
    symbols: list[str] = Field(default=list(_SETTINGS.symbols))
    timeframes: list[str] = Field(default=list(_SETTINGS.timeframes))
    lookback_days: int = Field(
        default=400,
        description="History read before the partition so slow indicators (EMA-200 on 1d) warm up.",
    )
    max_null_ratio: float = Field(
        default=0.02,
        description="Largest share of nulls (gaps break time windows) tolerated in a warm feature.",
    )


class MarketStatesConfig(dg.Config):
    symbols: list[str] = Field(default=list(_SETTINGS.symbols))
    decision_timeframe: str = Field(
        default="1h", description="A state is built at every close of this timeframe."
    )
    lookback_days: int = Field(default=10, description="History needed for 7-day volume averages.")


@dg.asset(
    deps=[bars],
    partitions_def=DAILY_PARTITIONS,
    backfill_policy=SINGLE_RUN_BACKFILL,
    group_name="features",
    kinds={"polars", "parquet"},
    description="RSI, MACD, EMAs, ATR, Bollinger %B, volatility, returns, volume and VWAP measures per timeframe.",
    check_specs=[
        dg.AssetCheckSpec(
            "no_nan_after_warmup",
            asset="features",
            blocking=True,
            description="Warm features hold no NaN or inf, and nulls (gap-broken windows) stay under max_null_ratio.",
        )
    ],
)
def features(context: dg.AssetExecutionContext, config: FeaturesConfig, warehouse: WarehouseResource):
    first, last = partition_days(context)
    wh = warehouse.get()
    end = last + timedelta(days=1)
    frames = []
    for tf in config.timeframes:
        history = wh.read(
            "bars",
            symbols=config.symbols,
            timeframes=[tf],
            start=first - timedelta(days=config.lookback_days),
            end=end,
        )
        if history.is_empty():
            continue
        computed = compute_features(history.drop("timeframe"), Timeframe.parse(tf)).with_columns(
            pl.lit(tf).alias("timeframe")
        )
        frames.append(computed.filter(pl.col("timestamp") >= first))
    table = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    if not table.is_empty():
        wh.upsert("features", table)
    charts = _feature_charts(wh, config.symbols, end) if table.height else {}
    warm_rows = table.filter(pl.col("warm")).height if table.height else 0
    quality = check_warm_features(table, max_null_ratio=config.max_null_ratio)
    return dg.MaterializeResult(
        metadata={
            "rows": table.height,
            "warm_rows": warm_rows,
            "timeframes": ", ".join(config.timeframes),
            **{f"chart_{symbol}": dg.MetadataValue.path(str(path)) for symbol, path in charts.items()},
        },
        check_results=[check_result("no_nan_after_warmup", quality)],
    )


def _feature_charts(wh: Warehouse, symbols: list[str], end: datetime) -> dict[str, Path]:
    """PNG per symbol: close with EMAs, RSI and MACD histogram of the last 30 days (1h bars)."""
    recent = wh.read("features", symbols=symbols, timeframes=["1h"], start=end - timedelta(days=30), end=end)
    reports = Path(wh.root) / "reports"
    return {
        symbol: plot_features(recent, symbol, "1h", reports / f"features_{symbol.replace('/', '-')}_1h.png")
        for symbol in symbols
        if recent.filter(pl.col("symbol") == symbol).height
    }


@dg.asset(
    deps=[features],
    partitions_def=DAILY_PARTITIONS,
    backfill_policy=SINGLE_RUN_BACKFILL,
    group_name="features",
    kinds={"polars", "parquet"},
    description="One market-state snapshot (and its prompt text) per symbol at every decision-bar close.",
    check_specs=[
        dg.AssetCheckSpec(
            "no_lookahead",
            asset="market_states",
            blocking=True,
            description="Every value in a state comes from a bar that had closed by the decision time.",
        )
    ],
)
def market_states(
    context: dg.AssetExecutionContext, config: MarketStatesConfig, warehouse: WarehouseResource
):
    first, last = partition_days(context)
    wh = warehouse.get()
    end = last + timedelta(days=1)
    decision_tf = Timeframe.parse(config.decision_timeframe)
    feats = wh.read(
        "features", symbols=config.symbols, start=first - timedelta(days=config.lookback_days), end=end
    )
    # Decision points: the close of every decision-timeframe bar inside the partitions.
    points = feats.filter(
        (pl.col("timeframe") == decision_tf.value)
        & (pl.col("timestamp") >= first)
        & (pl.col("timestamp") < end)
    ).select("symbol", (pl.col("timestamp") + decision_tf.duration).alias("at"))
    if points.is_empty():
        return dg.MaterializeResult(
            metadata={"states": 0},
            check_results=[
                dg.AssetCheckResult(check_name="no_lookahead", passed=True, metadata={"states": 0})
            ],
        )
    table = market_state_table(feats, points, timeframes=STATE_TIMEFRAMES)
    table = table.filter(pl.col("price").is_not_null())
    prompts = [s.to_prompt() for s in states_from_table(table)]
    table = table.with_columns(
        pl.Series("prompt", prompts, dtype=pl.String),
        (pl.col("at") - decision_tf.duration).alias("timestamp"),
        pl.lit(decision_tf.value).alias("timeframe"),
    )
    wh.upsert("market_states", table)
    close_cols = [c for c in table.columns if c.startswith("bar_close_") or c == "price_bar_close"]
    future = table.filter(pl.any_horizontal([pl.col(c) > pl.col("at") for c in close_cols]))
    return dg.MaterializeResult(
        metadata={
            "states": table.height,
            "example_prompt": dg.MetadataValue.md(f"```\n{prompts[-1]}\n```"),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="no_lookahead",
                passed=future.height == 0,
                metadata={"states_reading_future": future.height},
            )
        ],
    )

"""Jobs and schedules: what runs together, and when; `make_definitions` puts the project together."""

import dagster as dg

from assets.backtest import baseline_backtests, llm_backtests, promotion, walk_forward_report
from assets.features import features, market_states
from assets.live import live_performance
from assets.market_data import bars, raw_bars
from assets.partitions import DAILY_PARTITIONS
from assets.resources import MarketDataSourceResource, WarehouseResource
from assets.training import MlflowResource, finetuned_model, retrain_job, sft_dataset, weekly_retrain_schedule
from jobs.live import kill_switch, live_paper
from sensors.drift import drift_sensor
from sensors.live import champion_sensor, kill_switch_sensor

MARKET_DATA_ASSETS = dg.AssetSelection.assets("raw_bars", "bars", "features", "market_states")

market_data_job = dg.define_asset_job(
    name="market_data",
    selection=MARKET_DATA_ASSETS,
    partitions_def=DAILY_PARTITIONS,
    description="Ingest → clean/resample → features → market states for a range of days.",
)

# Each night, append yesterday: one day's work, not a rebuild.
daily_market_data_schedule = dg.build_schedule_from_partitioned_job(
    market_data_job, hour_of_day=0, minute_of_hour=15, name="daily_market_data"
)


def make_definitions(
    *, warehouse: WarehouseResource | None = None, market_data_source: MarketDataSourceResource | None = None
) -> dg.Definitions:
    """The project's definitions; `definitions.py` uses the defaults, `crypto-pipeline run` passes the
    resources of its run (e.g. the local exchange it started, with that run's keys)."""
    return dg.Definitions(
        assets=[
            raw_bars,
            bars,
            features,
            market_states,
            baseline_backtests,
            llm_backtests,
            walk_forward_report,
            promotion,
            sft_dataset,
            finetuned_model,
            live_performance,
        ],
        jobs=[market_data_job, retrain_job, live_paper, kill_switch],
        schedules=[daily_market_data_schedule, weekly_retrain_schedule],
        sensors=[champion_sensor, kill_switch_sensor, drift_sensor],
        resources={
            "warehouse": warehouse or WarehouseResource(),
            # Keys default to Settings (ALPACA_API_KEY / ALPACA_SECRET_KEY), read when a run starts.
            "market_data_source": market_data_source or MarketDataSourceResource(),
            "mlflow": MlflowResource(),
        },
    )

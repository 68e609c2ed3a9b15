"""The one `dg.Definitions` of the project, loaded by workspace.yaml and by `dagster ... -m definitions`.

Only this module puts the project together: assets, jobs and sensors import the library and each other
(a sensor imports the job it starts), never this module, so their imports run one way."""

import dagster as dg

from assets.backtest import baseline_backtests, llm_backtests, promotion, walk_forward_report
from assets.features import features, market_states
from assets.live import live_performance
from assets.market_data import bars, raw_bars
from assets.resources import MarketDataSourceResource, WarehouseResource
from assets.training import MlflowResource, finetuned_model, sft_dataset
from jobs.live import kill_switch, live_paper
from jobs.market_data import daily_market_data_schedule, market_data_job
from jobs.training import retrain_job, weekly_retrain_schedule
from sensors.drift import drift_sensor
from sensors.live import champion_sensor, kill_switch_sensor


def make_definitions(
    *, warehouse: WarehouseResource | None = None, market_data_source: MarketDataSourceResource | None = None
) -> dg.Definitions:
    """The project's definitions; `defs` uses the defaults, `crypto-pipeline run` passes the resources of
    its run (e.g. the local exchange it started, with that run's keys)."""
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


defs = make_definitions()
# `dagster dev -w workspace.yaml` (run from the repository root) serves the UI on http://127.0.0.1:3000

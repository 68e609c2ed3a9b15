"""The one `dg.Definitions` of the project, loaded by workspace.yaml and by `dagster ... -m definitions`."""

import os

import dagster as dg

from assets.features import features, market_states
from assets.market_data import bars, raw_bars
from assets.resources import MarketDataSourceResource, WarehouseResource
from assets.training import MlflowResource, finetuned_model, retrain_job, sft_dataset, weekly_retrain_schedule
from jobs import daily_market_data_schedule, market_data_job


def _secret(name: str) -> dg.EnvVar | None:
    # dg.EnvVar keeps the value out of the run config and the UI; absent keys are fine for crypto data.
    return dg.EnvVar(name) if os.environ.get(name) else None


defs = dg.Definitions(
    assets=[raw_bars, bars, features, market_states, sft_dataset, finetuned_model],
    jobs=[market_data_job, retrain_job],
    schedules=[daily_market_data_schedule, weekly_retrain_schedule],
    resources={
        "warehouse": WarehouseResource(),
        "market_data_source": MarketDataSourceResource(
            api_key=_secret("ALPACA_API_KEY"), secret_key=_secret("ALPACA_SECRET_KEY")
        ),
        "mlflow": MlflowResource(),
    },
)

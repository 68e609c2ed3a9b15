"""Daily partitions shared by every market-data asset: backfills and one-day appends come for free.

Dagster needs a partitions definition when the definitions load, so `Settings.partitions_start` and
`partitions_end` (both days included) are read then; everything else is read when a run starts.
"""

import warnings
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import dagster as dg

from crypto_pipeline.config import get_settings


def daily_partitions() -> dg.DailyPartitionsDefinition:
    """One partition per UTC day from `partitions_start` to `partitions_end`, both included (open-ended
    when `partitions_end` is empty, for live data)."""
    settings = get_settings()
    last = settings.partitions_end
    # Dagster's end_date is exclusive: the day after the last partition.
    end_date = (date.fromisoformat(last) + timedelta(days=1)).isoformat() if last else None
    return dg.DailyPartitionsDefinition(start_date=settings.partitions_start, end_date=end_date, end_offset=0)


DAILY_PARTITIONS = daily_partitions()
# Single-run backfills: a range of days is one run that reads and writes each partition once,
# instead of hundreds of tiny runs (and it lets `dagster asset materialize --partition-range` work).
SINGLE_RUN_BACKFILL = dg.BackfillPolicy.single_run()


def daily_asset(**kwargs: Any) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """`dg.asset` for every market-data asset: daily partitions, a range of days in one run."""

    def build(fn: Callable[..., Any]) -> dg.AssetsDefinition:
        # Dagster marks `backfill_policy` beta and warns once per asset in every process (every run, every
        # test); the policy is chosen on purpose, so silence exactly that warning while the asset is built.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=dg.BetaWarning, message=r".*backfill_policy.*")
            return dg.asset(partitions_def=DAILY_PARTITIONS, backfill_policy=SINGLE_RUN_BACKFILL, **kwargs)(fn)

    return build

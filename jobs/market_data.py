"""`market_data`: ingest → clean/resample → features → market states for a range of days, and the
nightly schedule that appends the day that just ended."""

import dagster as dg

from assets.partitions import DAILY_PARTITIONS

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

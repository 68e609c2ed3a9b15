"""Daily partitions shared by every market-data asset: backfills and one-day appends come for free."""

import dagster as dg

from crypto_pipeline.config import get_settings

_settings = get_settings()

# Single-run backfills: a range of days is one run that reads and writes each partition once,
# instead of hundreds of tiny runs (and it lets `dagster asset materialize --partition-range` work).
DAILY_PARTITIONS = dg.DailyPartitionsDefinition(
    start_date=_settings.partitions_start, end_date=_settings.partitions_end, end_offset=0
)
SINGLE_RUN_BACKFILL = dg.BackfillPolicy.single_run()

"""The incremental ingestion schedule: each tick asks for one run of the market-data job on the day
that just ended, one daily partition, never a range (so nothing already ingested is rebuilt)."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from definitions import make_definitions
from jobs.market_data import daily_market_data_schedule


def test_each_tick_of_daily_market_data_appends_the_day_that_just_ended() -> None:
    defs = make_definitions()
    assert defs.resolve_schedule_def("daily_market_data").cron_schedule == "15 0 * * *"
    for when, day in (
        (datetime(2024, 8, 6, 0, 15, tzinfo=UTC), "2024-08-05"),
        (
            datetime(2024, 3, 1, 0, 15, tzinfo=UTC),
            "2024-02-29",
        ),
    ):
        context = dg.build_schedule_context(
            scheduled_execution_time=when, repository_def=defs.get_repository_def()
        )
        result = daily_market_data_schedule.evaluate_tick(context)
        (request,) = result.run_requests
        assert request.partition_key == day
        assert request.job_name in (None, "market_data")
        # One partition: no range tags, so the single-run backfill policy does not widen it.
        assert not any(tag.startswith("dagster/asset_partition_range") for tag in request.tags)

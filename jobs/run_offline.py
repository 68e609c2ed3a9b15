"""`crypto-pipeline run` (and `make run`): the main job end to end on the offline default, then a summary.

By default the local Alpaca-compatible exchange is started in the background (its replay clock set just
after the recorded data, so all of it is history), and `raw_bars` ingests through alpaca-py's
`CryptoHistoricalDataClient` pointed at it: the same code path as real Alpaca. `--source recorded` skips
the exchange and imports the Parquet files directly.

The `market_data` job covers every daily partition in one run (single-run backfill), in process, against
the persistent Dagster instance in $DAGSTER_HOME, so the run shows up in `dagster dev`. The run's source
is passed to the job as a resource: nothing is configured through the environment.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import dagster as dg
from rich.console import Console

from assets.resources import MarketDataSourceResource
from crypto_pipeline.config import Settings, get_settings
from jobs import make_definitions

# Dagster's documented run tags of a single-run backfill over a range of partitions (both keys included).
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"

console = Console(width=max(Console().width, 120))
_SUMMARY_KEYS = ("rows_fetched", "rows_stored", "rows", "warm_rows", "states", "quarantined")


@contextlib.contextmanager
def local_exchange(settings: Settings, last_day: str) -> Iterator[MarketDataSourceResource]:
    """Start the local exchange for this run with throw-away keys; yield the source that reads from it."""
    from crypto_pipeline.exchange import ExchangeConfig, ExchangeServer

    # Fresh random keys: the exchange demands them like Alpaca does, and they exist only in this run.
    key, secret = f"PK{secrets.token_hex(8).upper()}", secrets.token_urlsafe(30)
    config = ExchangeConfig(
        host="127.0.0.1",
        port=0,
        data_dir=settings.market_data_dir,
        start=datetime.combine(date.fromisoformat(last_day) + timedelta(days=1), datetime.min.time(), UTC),
        speed=0.0,
        key=key,
        secret=secret,
        db_path=settings.warehouse_dir / "exchange-make-run.sqlite",
        reset=True,
    )
    with ExchangeServer(config) as server:
        console.print(f"local exchange: {server.base_url} (replay clock {config.start:%Y-%m-%d %H:%M} UTC)")
        yield MarketDataSourceResource(
            kind="alpaca", url_override=server.base_url, api_key=key, secret_key=secret
        )
    console.print("local exchange stopped")


def run_market_data(
    first_day: str, last_day: str, market_data_source: MarketDataSourceResource
) -> dg.ExecuteInProcessResult:
    """The `market_data` job over the days `first_day`..`last_day` (both included) as one run."""
    job = make_definitions(market_data_source=market_data_source).resolve_job_def("market_data")
    tags = {PARTITION_RANGE_START_TAG: first_day, PARTITION_RANGE_END_TAG: last_day}
    with dg.DagsterInstance.get() as instance:
        return job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)


def report(result: dg.ExecuteInProcessResult) -> None:
    partitions: dict[str, int] = {}
    shown: dict[str, dict] = {}
    charts: dict[str, str] = {}
    for evaluation in result.get_asset_check_evaluations():
        mark = "[green]passed[/]" if evaluation.passed else "[red]FAILED[/]"
        console.print(f"  check {evaluation.asset_key.to_user_string()}.{evaluation.check_name}: {mark}")
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        key = mat.asset_key.to_user_string()
        partitions[key] = partitions.get(key, 0) + 1
        # One run covers every partition, so each partition's event carries the run's totals.
        shown[key] = {k: v.value for k, v in mat.metadata.items() if k in _SUMMARY_KEYS}
        charts.update({k: v.value for k, v in mat.metadata.items() if k.startswith("chart_")})
    for key, count in partitions.items():
        console.print(f"  [green]materialized[/] {key:<14} {count} daily partitions  {shown[key]}")
    for name, path in sorted(charts.items()):
        console.print(f"  chart {name.removeprefix('chart_')}: {path}")


def run(source: str = "exchange") -> bool:
    """The whole offline run; True when the job succeeded."""
    if source not in ("exchange", "recorded"):
        raise ValueError(f"unknown source {source!r}: expected 'exchange' or 'recorded'")
    settings = get_settings()
    console.rule("[bold]crypto-pipeline: offline end-to-end run")
    console.print(f"symbols: {', '.join(settings.symbols)}  days: {settings.start} .. {settings.end}")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if source == "exchange":
            resource = stack.enter_context(local_exchange(settings, settings.end))
            console.print("source: alpaca-py CryptoHistoricalDataClient → local exchange")
        else:
            resource = MarketDataSourceResource(kind="recorded", data_dir=str(settings.market_data_dir))
            console.print(f"source: recorded Parquet files in {settings.market_data_dir}")
        result = run_market_data(settings.start, settings.end, resource)
        report(result)
    status = "[green]success[/]" if result.success else "[red]failure[/]"
    console.print(f"market_data job: {status} in {time.perf_counter() - started:.0f} s")
    return result.success

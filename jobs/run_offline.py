"""`make run`: the main job end to end on the offline default, then a summary of what was built.

By default the local Alpaca-compatible exchange is started in the background (its replay clock set just
after the recorded data, so all of it is history), and `raw_bars` ingests through alpaca-py's
`CryptoHistoricalDataClient` pointed at it: the same code path as real Alpaca. `--source recorded` skips
the exchange and imports the Parquet files directly.

The `market_data` job covers every daily partition in one run (single-run backfill), in process, against
the persistent Dagster instance in $DAGSTER_HOME, so the run shows up in `dagster dev`.
"""

import contextlib
import os
import secrets
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Annotated

import dagster as dg
import typer
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from rich.console import Console

from crypto_pipeline.config import get_settings

console = Console(width=max(Console().width, 120))
_SUMMARY_KEYS = ("rows_fetched", "rows_stored", "rows", "warm_rows", "states", "quarantined")


@contextlib.contextmanager
def local_exchange(last_day: str) -> Iterator[str]:
    """Start the local exchange for this run with throw-away keys; yield its base URL."""
    from crypto_pipeline.exchange import ExchangeConfig, ExchangeServer

    settings = get_settings()
    # Fresh random keys: the exchange demands them like Alpaca does, and they exist only in this process.
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
        os.environ["ALPACA_API_KEY"], os.environ["ALPACA_SECRET_KEY"] = key, secret
        try:
            yield server.base_url
        finally:
            os.environ.pop("ALPACA_API_KEY", None)
            os.environ.pop("ALPACA_SECRET_KEY", None)
    console.print("local exchange stopped")


def run_market_data(first_day: str, last_day: str) -> dg.ExecuteInProcessResult:
    # Imported here: the definitions read Settings (source, URLs) and key variables at import time.
    from definitions import defs

    job = defs.resolve_job_def("market_data")
    tags = {ASSET_PARTITION_RANGE_START_TAG: first_day, ASSET_PARTITION_RANGE_END_TAG: last_day}
    with dg.DagsterInstance.get() as instance:
        return job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)


def report(result: dg.ExecuteInProcessResult) -> None:
    partitions: dict[str, int] = {}
    shown: dict[str, dict] = {}
    charts: dict[str, str] = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            mat = event.event_specific_data.materialization
            key = mat.asset_key.to_user_string()
            partitions[key] = partitions.get(key, 0) + 1
            # One run covers every partition, so each partition's event carries the run's totals.
            shown[key] = {k: v.value for k, v in mat.metadata.items() if k in _SUMMARY_KEYS}
            charts.update({k: v.value for k, v in mat.metadata.items() if k.startswith("chart_")})
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            ev = event.event_specific_data
            mark = "[green]passed[/]" if ev.passed else "[red]FAILED[/]"
            console.print(f"  check {ev.asset_key.to_user_string()}.{ev.check_name}: {mark}")
    for key, count in partitions.items():
        console.print(f"  [green]materialized[/] {key:<14} {count} daily partitions  {shown[key]}")
    for name, path in sorted(charts.items()):
        console.print(f"  chart {name.removeprefix('chart_')}: {path}")


def main(
    source: Annotated[
        str, typer.Option(help="'exchange' (alpaca-py via the local exchange) or 'recorded' (Parquet files)")
    ] = "exchange",
) -> None:
    if source not in ("exchange", "recorded"):
        raise typer.BadParameter("expected 'exchange' or 'recorded'", param_hint="--source")
    settings = get_settings()
    console.rule("[bold]crypto-pipeline: offline end-to-end run")
    console.print(f"symbols: {', '.join(settings.symbols)}  days: {settings.start} .. {settings.end}")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if source == "exchange":
            base_url = stack.enter_context(local_exchange(settings.end))
            os.environ["CRYPTO_PIPELINE_SOURCE"] = "alpaca"
            os.environ["CRYPTO_PIPELINE_ALPACA_DATA_URL"] = base_url
            get_settings.cache_clear()
            console.print("source: alpaca-py CryptoHistoricalDataClient → local exchange")
        else:
            console.print(f"source: recorded Parquet files in {settings.market_data_dir}")
        result = run_market_data(settings.start, settings.end)
        report(result)
    status = "[green]success[/]" if result.success else "[red]failure[/]"
    console.print(f"market_data job: {status} in {time.perf_counter() - started:.0f} s")
    if not result.success:
        raise typer.Exit(1)
    from crypto_pipeline.cli import app

    app(["info"], standalone_mode=False)


if __name__ == "__main__":
    sys.exit(typer.run(main))

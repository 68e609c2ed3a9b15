"""`crypto-pipeline run` (what `make run` calls): the market_data job over the configured days, through the
local exchange or from the recorded files, with its counts and checks printed; and the closing live_paper
session, summarized from its journal."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from crypto_pipeline.cli import app
from crypto_pipeline.config import get_settings
from crypto_pipeline.warehouse import Warehouse


@pytest.fixture
def two_days(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded) -> Path:
    """Settings for two days of one symbol in a temporary warehouse and Dagster instance."""
    (tmp_path / "dagster").mkdir()
    for name, value in {
        "CRYPTO_PIPELINE_WAREHOUSE_DIR": str(tmp_path / "warehouse"),
        "CRYPTO_PIPELINE_MLRUNS_DIR": str(tmp_path / "mlruns"),
        "CRYPTO_PIPELINE_MARKET_DATA_DIR": str(recorded("binance-spot-2024")),
        "CRYPTO_PIPELINE_SYMBOLS": '["BTC/USDT"]',
        "CRYPTO_PIPELINE_START": "2024-03-04",
        "CRYPTO_PIPELINE_END": "2024-03-05",
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "COLUMNS": "160",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()  # the run reads the settings of this test's environment
    yield tmp_path / "warehouse"
    get_settings.cache_clear()


@pytest.mark.parametrize("source", ["recorded", "exchange"])
def test_run_builds_every_asset_over_the_configured_days(two_days: Path, source: str) -> None:
    result = CliRunner().invoke(app, ["run", "--source", source, "--no-train", "--live-seconds", "0"])
    assert result.exit_code == 0, result.output
    assert "6/6 checks passed" in result.output
    assert "market_states       2 partitions    states=48" in result.output
    assert Warehouse(two_days).read("market_states").height == 48
    # one line per stage on the terminal; Dagster's event log and the exchange's lines go to the log file
    assert "STEP_START" not in result.output and "offline run: success" in result.output
    [log] = (two_days / "logs").glob("run-*.log")
    assert "STEP_START" in log.read_text()
    if source == "exchange":
        assert "local exchange stopped" in log.read_text()


def test_run_rejects_an_unknown_source() -> None:
    result = CliRunner().invoke(app, ["run", "--source", "ftp"])
    assert result.exit_code != 0 and "expected 'exchange' or 'recorded'" in result.output


def test_run_ends_with_a_live_session_summarized_from_its_journal(two_days: Path) -> None:
    # No model is registered (--no-train): the rules trade, and the run says so. Three decision times
    # bound the session (the runtime bound is only a safety net), so the test does not race the replay.
    args = ["run", "--source", "recorded", "--no-train", "--live-seconds", "600", "--live-decisions", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert re.search(r"✓ live paper session \(600 s at 3600x\)", result.output), result.output
    [session] = re.findall(
        r"session (make-run-\w+): no crypto-policy@champion registered: the rules trade",
        result.output,
    )

    def journal(table: str) -> pl.DataFrame:
        return Warehouse(two_days).read(table).filter(pl.col("run_id") == session)

    decisions, equity = journal("decisions"), journal("equity").sort("time")
    assert decisions["time"].n_unique() == 3 and decisions["symbol"].unique().to_list() == ["BTC/USDT"]
    valid = int(decisions["valid"].sum())
    assert f"decisions: {decisions.height} at 3 decision time(s)" in result.output
    assert f"valid rate: {valid / decisions.height:.1%} ({valid} valid;" in result.output
    orders = journal("orders")["client_order_id"].n_unique()
    assert f"orders: {orders}; fills: {journal('fills').height}" in result.output
    pnl = equity["equity"][-1] - equity["equity"][0]
    assert f"P&L: {pnl:+,.2f} USD" in result.output and "buy-and-hold of the same symbols:" in result.output
    assert "decision latency: p50" in result.output and "stopped: max decisions 3" in result.output
    # what each stage took, then the commands that open the UIs on what the run made
    assert re.search(
        r"stages: market data \(recorded Parquet files\) \d+ s, live paper session", result.output
    )
    assert "dagster-webserver -w workspace.yaml" in result.output
    assert (
        f"mlflow ui --backend-store-uri sqlite:///{two_days.parent / 'mlruns' / 'mlflow.db'}" in result.output
    )
    assert not (two_days.parent / "mlruns").exists()  # looking for a model created no registry

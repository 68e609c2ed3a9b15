"""`crypto-pipeline ingest` and `crypto-pipeline info` on a temporary warehouse."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from crypto_pipeline.cli import app
from crypto_pipeline.warehouse import Warehouse


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def env(tmp_path: Path, recorded) -> dict[str, str]:
    return {
        "CRYPTO_PIPELINE_WAREHOUSE_DIR": str(tmp_path / "warehouse"),
        "CRYPTO_PIPELINE_MARKET_DATA_DIR": str(recorded("binance-spot-2024")),
        "CRYPTO_PIPELINE_SOURCE": "recorded",
        "COLUMNS": "160",
    }


def test_ingest_fills_raw_bars_and_bars_and_info_shows_them(
    runner: CliRunner, env: dict[str, str], tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        [
            "ingest",
            "--symbols",
            "BTC/USDT,eth/usdt",
            "--start",
            "2024-02-01",
            "--end",
            "2024-02-02",
            "--no-progress",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "1,152 5m bars fetched for 2 symbol(s)" in result.output
    assert "5m 1,152, 15m 384, 1h 96, 4h 24, 1d 4" in result.output

    wh = Warehouse(tmp_path / "warehouse")
    assert wh.read("bars", timeframes=["1h"]).group_by("symbol").len().sort("symbol").rows() == [
        ("BTC/USDT", 48),
        ("ETH/USDT", 48),
    ]
    info = runner.invoke(app, ["info"], env=env)
    assert info.exit_code == 0, info.output
    lines = [line for line in info.output.splitlines() if "USDT" in line]
    assert len(lines) == 2 + 2 * 5  # raw_bars and bars (5 timeframes) for each symbol
    assert any(
        "raw_bars" in line and "BTC/USDT" in line and "576" in line and "0.00%" in line for line in lines
    )
    assert any("bars" in line and "ETH/USDT" in line and " 1d " in line for line in lines)


def test_info_on_an_empty_warehouse_says_how_to_fill_it(runner: CliRunner, env: dict[str, str]) -> None:
    result = runner.invoke(app, ["info"], env=env)
    assert result.exit_code == 0
    assert "nothing stored" in result.output and "crypto-pipeline ingest" in result.output


def test_ingest_defaults_come_from_settings(runner: CliRunner, env: dict[str, str], tmp_path: Path) -> None:
    env = env | {
        "CRYPTO_PIPELINE_SYMBOLS": '["SOL/USDT"]',
        "CRYPTO_PIPELINE_START": "2024-02-03",
        "CRYPTO_PIPELINE_END": "2024-02-03",
        "CRYPTO_PIPELINE_TIMEFRAMES": '["1h"]',
    }
    result = runner.invoke(app, ["ingest", "--no-progress"], env=env)
    assert result.exit_code == 0, result.output
    bars = Warehouse(tmp_path / "warehouse").read("bars")
    assert bars.group_by("symbol", "timeframe").len().sort("timeframe").rows() == [
        ("SOL/USDT", "1h", 24),
        ("SOL/USDT", "5m", 288),
    ]


def test_ingest_reads_alpaca_shaped_csvs_from_another_data_dir(
    runner: CliRunner, env: dict[str, str], tmp_path: Path, recorded
) -> None:
    args = ["ingest", "--data-dir", str(recorded("alpaca-btcusd-2021")), "--timeframe", "1m", "--symbols", "BTC/USD"]
    result = runner.invoke(
        app, [*args, "--start", "2021-01-02", "--end", "2021-01-02", "--raw-only", "--no-progress"], env=env
    )
    assert result.exit_code == 0, result.output
    raw = Warehouse(tmp_path / "warehouse").read("raw_bars")
    assert raw.height == 1440 and raw["trade_count"].null_count() == 0
    assert not (tmp_path / "warehouse" / "bars").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--symbols", "BTC/USDT,FAKE/USDT"], "error: unknown symbol(s) FAKE/USDT for recorded data in"),
        (
            ["--start", "2024-02-05", "--end", "2024-02-01"],
            "error: start 2024-02-05 is not before end 2024-02-01",
        ),
        (["--timeframe", "2h"], "error: unknown timeframe '2h'"),
        (["--source", "ftp"], "error: unknown source 'ftp'"),
        (
            ["--data-dir", "/nonexistent/bars"],
            "error: recorded data directory /nonexistent/bars does not exist",
        ),
    ],
)
def test_user_mistakes_exit_2_with_one_line_and_no_traceback(
    runner: CliRunner, env: dict[str, str], args: list[str], message: str
) -> None:
    base = [
        "ingest",
        "--symbols",
        "BTC/USDT",
        "--start",
        "2024-02-01",
        "--end",
        "2024-02-01",
        "--no-progress",
    ]
    result = runner.invoke(app, [*base, *args], env=env)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_ingest_shows_progress_bars(runner: CliRunner, env: dict[str, str]) -> None:
    result = runner.invoke(
        app,
        ["ingest", "--symbols", "BTC/USDT", "--start", "2024-02-01", "--end", "2024-02-01", "--raw-only"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "fetch 5m" in result.output and "write raw_bars" in result.output


def test_running_ingest_twice_changes_nothing(runner: CliRunner, env: dict[str, str], tmp_path: Path) -> None:
    args = [
        "ingest",
        "--symbols",
        "BTC/USDT",
        "--start",
        "2024-02-01",
        "--end",
        "2024-02-01",
        "--no-progress",
    ]
    assert runner.invoke(app, args, env=env).exit_code == 0
    stored = Warehouse(tmp_path / "warehouse").read("bars")
    second = runner.invoke(app, args, env=env)
    assert second.exit_code == 0
    assert "0 partition(s) written, 1 unchanged" in second.output
    assert "0 partition(s) written, 5 unchanged" in second.output
    assert Warehouse(tmp_path / "warehouse").read("bars").equals(stored)
    assert isinstance(stored, pl.DataFrame) and stored.height == 288 + 96 + 24 + 6 + 1

"""`crypto-pipeline run` (what `make run` calls): the market_data job over the configured days, through the
local exchange or from the recorded files, with its counts and checks printed."""

from __future__ import annotations

from pathlib import Path

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
    result = CliRunner().invoke(app, ["run", "--source", source, "--no-train"])
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

"""`crypto-pipeline run` (what `make run` calls): the market_data job over the configured days, through the
local exchange or from the recorded files, with its counts and checks printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from crypto_pipeline.cli import app
from crypto_pipeline.config import SHARED_MARKET_DATA, get_settings
from crypto_pipeline.warehouse import Warehouse

BINANCE = SHARED_MARKET_DATA / "binance-spot-2024"
pytestmark = pytest.mark.skipif(not BINANCE.exists(), reason="shared market data is absent")


@pytest.fixture
def two_days(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings for two days of one symbol in a temporary warehouse and Dagster instance."""
    (tmp_path / "dagster").mkdir()
    for name, value in {
        "CRYPTO_PIPELINE_WAREHOUSE_DIR": str(tmp_path / "warehouse"),
        "CRYPTO_PIPELINE_MARKET_DATA_DIR": str(BINANCE),
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
    result = CliRunner().invoke(app, ["run", "--source", source])
    assert result.exit_code == 0, result.output
    assert "check market_states.no_lookahead: passed" in result.output
    assert "materialized market_states  2 daily partitions  {'states': 48}" in result.output
    assert Warehouse(two_days).read("market_states").height == 48
    if source == "exchange":
        assert "local exchange stopped" in result.output


def test_run_rejects_an_unknown_source() -> None:
    result = CliRunner().invoke(app, ["run", "--source", "ftp"])
    assert result.exit_code != 0 and "expected 'exchange' or 'recorded'" in result.output

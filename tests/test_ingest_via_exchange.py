"""Ingestion through the unmodified alpaca-py client and the local exchange equals the recorded data."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from crypto_pipeline.errors import UserInputError
from crypto_pipeline.exchange import ExchangeConfig, ExchangeServer
from crypto_pipeline.ingest import ingest_raw
from crypto_pipeline.market.sources import AlpacaSource, RecordedSource
from crypto_pipeline.warehouse import Warehouse

KEY, SECRET = "ingest-test-key", "ingest-test-secret"


@pytest.fixture(scope="module")
def binance(recorded) -> Path:
    return recorded("binance-spot-2024")


@pytest.fixture(scope="module")
def exchange(tmp_path_factory, binance):
    config = ExchangeConfig(
        host="127.0.0.1",
        port=0,
        key=KEY,
        secret=SECRET,
        data_dir=binance,
        db_path=tmp_path_factory.mktemp("ex") / "exchange.sqlite",
        start="2024-03-08",
        speed=0.0,
        stepped=True,  # the clock stays at the start: "no bar after the clock" has one answer
    )
    with ExchangeServer(config) as server:
        yield server


def _ohlcv(df: pl.DataFrame) -> pl.DataFrame:
    return df.select("symbol", "timestamp", "open", "high", "low", "close", "volume").sort(
        "symbol", "timestamp"
    )


def test_alpaca_source_through_the_exchange_equals_the_recorded_import(exchange, binance, tmp_path):
    source = AlpacaSource(KEY, SECRET, url_override=exchange.base_url)
    via_alpaca, recorded = Warehouse(tmp_path / "a"), Warehouse(tmp_path / "r")
    symbols = ["BTC/USDT", "ETH/USDT"]
    report = ingest_raw(source, via_alpaca, symbols, "5m", date(2024, 3, 1), date(2024, 3, 7), progress=False)
    ingest_raw(
        RecordedSource(binance), recorded, symbols, "5m", date(2024, 3, 1), date(2024, 3, 7), progress=False
    )
    assert report.rows_fetched == 2 * 7 * 288
    got, want = _ohlcv(via_alpaca.read("raw_bars")), _ohlcv(recorded.read("raw_bars"))
    assert got.height == want.height == 2 * 7 * 288
    assert got.equals(want)


def test_the_exchange_serves_no_bar_after_its_replay_clock(exchange, tmp_path):
    source = AlpacaSource(KEY, SECRET, url_override=exchange.base_url)
    bars = source.fetch_bars(
        ["BTC/USDT"],
        "1h",
        datetime(2024, 3, 7, tzinfo=UTC),
        datetime(2024, 3, 20, tzinfo=UTC),
    )
    assert bars.height > 0
    assert bars["timestamp"].max() + timedelta(hours=1) <= datetime(2024, 3, 8, tzinfo=UTC)


def test_unknown_symbol_through_the_exchange_is_one_clear_user_error(exchange, tmp_path):
    source = AlpacaSource(KEY, SECRET, url_override=exchange.base_url)
    with pytest.raises(UserInputError, match="NOPE/USDT"):
        ingest_raw(
            source,
            Warehouse(tmp_path),
            ["NOPE/USDT"],
            "5m",
            date(2024, 3, 1),
            date(2024, 3, 2),
            progress=False,
        )

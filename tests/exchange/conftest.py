"""Fixtures that start the local exchange on a free loopback port and drive it with alpaca-py."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from alpaca.data.historical.crypto import CryptoHistoricalDataClient
from alpaca.trading.client import TradingClient

from crypto_pipeline.config import SHARED_MARKET_DATA
from crypto_pipeline.exchange import ExchangeConfig, ExchangeServer

KEY = "test-key-id"
SECRET = "test-secret-value"
DATA_2024 = SHARED_MARKET_DATA / "binance-spot-2024"
CAPTURE = SHARED_MARKET_DATA / "binance-ws-sample-20240808"
STEPPED_START = datetime(2024, 8, 2, tzinfo=UTC)


@pytest.fixture(autouse=True, scope="session")
def _replays_recorded_data(recorded) -> None:
    """Every exchange test replays the recorded bars: skipped without them, failed without them in CI."""
    recorded("binance-spot-2024")


def make_config(db_path: Path, **overrides: object) -> ExchangeConfig:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "key": KEY,
        "secret": SECRET,
        "data_dir": DATA_2024,
        "db_path": db_path,
        "start": "2024-06-01",
        "speed": 1800.0,
    }
    values.update(overrides)
    return ExchangeConfig(**values)


@pytest.fixture(scope="session")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExchangeServer]:
    """The shared exchange: replaying from 2024-06-01 at 30 market minutes per second."""
    db = tmp_path_factory.mktemp("exchange") / "exchange.sqlite"
    with ExchangeServer(make_config(db)) as server:
        yield server


@pytest.fixture(scope="session")
def capture_days_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the recorded 5m and 1d bars of BTC/USDT and ETH/USDT around the capture's day: an
    exchange over it starts in a fraction of a second (the full set takes about 2 s to index)."""
    directory = tmp_path_factory.mktemp("capture-days-data")
    for timeframe in ("5m", "1d"):
        (
            pl.scan_parquet(DATA_2024 / f"bars_{timeframe}.parquet")
            .filter(
                pl.col("symbol").is_in(["BTC/USDT", "ETH/USDT"]),
                pl.col("timestamp").is_between(
                    datetime(2024, 8, 1, tzinfo=UTC), datetime(2024, 8, 12, tzinfo=UTC)
                ),
            )
            .collect()
            .write_parquet(directory / f"bars_{timeframe}.parquet")
        )
    return directory


@pytest.fixture(scope="module")
def stepped(capture_days_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExchangeServer]:
    """An exchange over BTC/USDT and ETH/USDT whose clock stands at STEPPED_START until the test moves it
    with `stepped.advance_to(moment)`: what a test asserts about which bar or quote something happened at
    then cannot depend on how fast the machine is. Room for orders beyond a bar's participation cap."""
    config = make_config(
        tmp_path_factory.mktemp("stepped") / "exchange.sqlite",
        data_dir=capture_days_data,
        capture_dir=None,
        start=STEPPED_START.isoformat(),
        speed=0.0,
        stepped=True,
        initial_cash=10_000_000.0,
    )
    with ExchangeServer(config) as server:
        yield server


def bars_5m(data_dir: Path, symbol: str, since: datetime) -> pl.DataFrame:
    """The recorded 5m bars of `symbol` opening at or after `since`, in time order."""
    return (
        pl.read_parquet(data_dir / "bars_5m.parquet")
        .filter(pl.col("symbol") == symbol, pl.col("timestamp") >= since)
        .sort("timestamp")
    )


def half_spread(bar: dict[str, float]) -> float:
    """docs/exchange.md: full spread = max(1 bp, 5% x (high - low) / close)."""
    return max(1e-4, 0.05 * (bar["high"] - bar["low"]) / bar["close"]) / 2


@pytest.fixture
def start_exchange(tmp_path: Path) -> Iterator[Callable[..., ExchangeServer]]:
    """Start extra exchanges (faults, restarts); all are stopped at the end of the test."""
    started: list[ExchangeServer] = []

    def start(**overrides: object) -> ExchangeServer:
        overrides.setdefault("db_path", tmp_path / "exchange.sqlite")
        server = ExchangeServer(make_config(**overrides)).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def trading(exchange: ExchangeServer) -> TradingClient:
    return TradingClient(KEY, SECRET, paper=True, url_override=exchange.base_url)


@pytest.fixture
def data_client(exchange: ExchangeServer) -> CryptoHistoricalDataClient:
    return CryptoHistoricalDataClient(KEY, SECRET, url_override=exchange.base_url)


@contextlib.contextmanager
def running(stream: object) -> Iterator[None]:
    """Run an alpaca-py stream (CryptoDataStream / TradingStream) in a thread for the block."""
    thread = threading.Thread(target=stream.run, daemon=True)  # type: ignore[attr-defined]
    thread.start()
    try:
        yield
    finally:
        deadline = time.monotonic() + 5
        while getattr(stream, "_loop", None) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        with contextlib.suppress(Exception):
            stream.stop()  # type: ignore[attr-defined]
        # The client notices a stop only when a receive times out (5 s); closing its socket too ends the
        # receive at once. The close is created inside its loop, which may have ended already.
        loop = getattr(stream, "_loop", None)
        with contextlib.suppress(RuntimeError, AttributeError):  # no loop, or a closed one
            loop.call_soon_threadsafe(lambda: loop.create_task(stream.close()))  # type: ignore[union-attr]
        thread.join(timeout=10)


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> object:
    """Poll until `condition()` is truthy; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")

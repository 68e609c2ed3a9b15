"""Fixtures that start the local exchange on a free loopback port and drive it with alpaca-py."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alpaca.data.historical.crypto import CryptoHistoricalDataClient
from alpaca.trading.client import TradingClient

from crypto_pipeline.config import SHARED_MARKET_DATA
from crypto_pipeline.exchange import ExchangeConfig, ExchangeServer

KEY = "test-key-id"
SECRET = "test-secret-value"
DATA_2024 = SHARED_MARKET_DATA / "binance-spot-2024"

if not DATA_2024.is_dir():
    pytest.skip(f"recorded market data not found at {DATA_2024}", allow_module_level=True)


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

"""A stepped local exchange over two symbols and a few days, and helpers to run a live session
against it: the test moves the replay clock, so what a session sees does not depend on machine speed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from pydantic import SecretStr

from crypto_pipeline.config import SHARED_MARKET_DATA
from crypto_pipeline.exchange import ExchangeConfig, ExchangeServer
from crypto_pipeline.live.config import LiveConfig
from crypto_pipeline.live.session import LiveSession
from crypto_pipeline.live.venue import Clients, Credentials, Endpoints
from crypto_pipeline.llm.decision import Action, TradeDecision
from crypto_pipeline.warehouse import Warehouse

KEY = "live-test-key"
SECRET = "live-test-secret-0c7d1e"
DATA_2024 = SHARED_MARKET_DATA / "binance-spot-2024"
SYMBOLS = ("BTC/USDT", "ETH/USDT")
START = datetime(2024, 8, 5, 12, tzinfo=UTC)

if not DATA_2024.is_dir():
    pytest.skip(f"recorded market data not found at {DATA_2024}", allow_module_level=True)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BTC/USDT and ETH/USDT 5m and 1d bars of 2024-08-01..11: an exchange over them starts at once."""
    directory = tmp_path_factory.mktemp("live-data")
    for timeframe in ("5m", "1d"):
        (
            pl.scan_parquet(DATA_2024 / f"bars_{timeframe}.parquet")
            .filter(
                pl.col("symbol").is_in(list(SYMBOLS)),
                pl.col("timestamp").is_between(
                    datetime(2024, 8, 1, tzinfo=UTC), datetime(2024, 8, 12, tzinfo=UTC)
                ),
            )
            .collect()
            .write_parquet(directory / f"bars_{timeframe}.parquet")
        )
    return directory


def exchange_config(db: Path, data: Path, **overrides: object) -> ExchangeConfig:
    values: dict[str, object] = {
        "port": 0,
        "key": KEY,
        "secret": SECRET,
        "data_dir": data,
        "capture_dir": None,
        "db_path": db,
        "start": START.isoformat(),
        "speed": 0.0,
        "stepped": True,
    }
    values.update(overrides)
    return ExchangeConfig(**values)


@pytest.fixture
def start_exchange(tmp_path: Path, small_data: Path) -> Iterator[Callable[..., ExchangeServer]]:
    started: list[ExchangeServer] = []

    def start(**overrides: object) -> ExchangeServer:
        db = overrides.pop("db_path", tmp_path / "exchange.sqlite")
        server = ExchangeServer(exchange_config(db, small_data, **overrides)).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class AlwaysBuy:
    """A provider that buys every symbol it is shown, then sells what it holds: orders at every step."""

    name = "always-buy"

    def decide(self, states: list) -> list[TradeDecision]:
        out = []
        for s in states:
            holding = s.portfolio is not None and s.portfolio.position_qty > 0
            action = Action.SELL if holding else Action.BUY
            out.append(
                TradeDecision(
                    action=action,
                    confidence=90,
                    position_size_pct=10 if action is Action.BUY else 100,
                    symbol=s.symbol,
                    at=s.at,
                    provider=self.name,
                    model_version="test",
                )
            )
        return out


class BuyOnce:
    """A provider that buys what it does not hold and holds what it does: a session restarted on the
    bar of its buy does not order that symbol again, so only reconciliation can journal that order."""

    name = "buy-once"

    def decide(self, states: list) -> list[TradeDecision]:
        return [
            TradeDecision(
                action=Action.HOLD
                if s.portfolio is not None and s.portfolio.position_qty > 0
                else Action.BUY,
                confidence=90,
                position_size_pct=10,
                symbol=s.symbol,
                at=s.at,
                provider=self.name,
                model_version="test",
            )
            for s in states
        ]


def clients_for(server: ExchangeServer, key: str = KEY, secret: str = SECRET) -> Clients:
    return Clients.connect(Endpoints.local(server.base_url), Credentials(SecretStr(key), SecretStr(secret)))


def live_config(**overrides: object) -> LiveConfig:
    values: dict[str, object] = {
        "session_id": "t1",
        "symbols": SYMBOLS,
        "timeframe": "5m",
        "decision_interval": "1h",
        "max_runtime_s": 60,
        "lookback_days": 4,
        "grace_s": 0.5,
    }
    values.update(overrides)
    return LiveConfig(**values)


class Running:
    """A session in a thread; `step(hours)` moves the exchange clock an hour at a time and waits for
    the session to decide at each new hour."""

    def __init__(self, session: LiveSession, server: ExchangeServer) -> None:
        self.session, self.server = session, server
        self.error: BaseException | None = None
        self.clock = START
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.session.run()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.session.subscribed.is_set():
            if self.error is not None:
                raise self.error
            assert time.monotonic() < deadline, "the session never subscribed"
            time.sleep(0.02)
        self.wait_batches(1)  # the first decision: at the hour the history reaches
        return self

    def wait_batches(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.session.report.decision_batches < n:
            if self.error is not None:
                raise self.error
            assert time.monotonic() < deadline, (
                f"only {self.session.report.decision_batches} decision batches"
            )
            time.sleep(0.02)

    def step(self, hours: int = 1) -> None:
        for _ in range(hours):
            done = self.session.report.decision_batches
            self.clock += timedelta(hours=1)
            self.server.advance_to(self.clock)
            self.wait_batches(done + 1)

    def __exit__(self, *exc: object) -> None:
        self.session.stop("test over")
        self.thread.join(timeout=60)
        if self.error is not None and exc[0] is None:
            raise self.error


def journal(warehouse: Warehouse, table: str) -> pl.DataFrame:
    return warehouse.read(table)

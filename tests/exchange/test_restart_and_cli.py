"""The `crypto-pipeline exchange` command, and restarts: a clean stop and a killed process lose nothing,
and the replay clock resumes where the account left it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest
from alpaca.data.live.crypto import CryptoDataStream
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest
from typer.testing import CliRunner

from crypto_pipeline.cli import app
from crypto_pipeline.exchange import ExchangeServer

from .conftest import KEY, SECRET, running, wait_for
from .test_streams import Collector

FROZEN_AT = datetime(2024, 8, 5, 12, 0, tzinfo=UTC)
BUY, GTC = OrderSide.BUY, TimeInForce.GTC


def all_orders(client: TradingClient) -> dict[str, object]:
    return {o.id: o for o in client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500))}


def test_a_working_order_survives_a_restart_and_then_fills_as_maker_at_its_limit(
    start_exchange: Callable[..., ExchangeServer], capture_days_data: Path, tmp_path: Path
) -> None:
    options: dict[str, object] = {
        "db_path": tmp_path / "restart.sqlite",
        "data_dir": capture_days_data,
        "capture_dir": None,
        "speed": 0.0,  # the clock moves only while a stream client reads
        "maker_fee_bps": 10.0,
        "taker_fee_bps": 30.0,
    }
    first = start_exchange(start=FROZEN_AT.isoformat(), **options)
    client = TradingClient(KEY, SECRET, paper=True, url_override=first.base_url)
    client.submit_order(MarketOrderRequest(symbol="ETH/USDT", qty=1.0, side=BUY, time_in_force=GTC))
    bars = (
        pl.read_parquet(capture_days_data / "bars_5m.parquet")
        .filter(pl.col("symbol") == "BTC/USDT", pl.col("timestamp") >= FROZEN_AT - timedelta(minutes=5))
        .sort("timestamp")
    )
    limit = round(bars["close"][0] * 0.995, 2)
    through = bars.filter(pl.col("timestamp") >= FROZEN_AT, pl.col("low") < limit).row(0, named=True)
    assert through["open"] > limit, "the first bar through the limit opens beyond it: pick another limit"
    resting = client.submit_order(
        LimitOrderRequest(symbol="BTC/USDT", qty=0.1, side=BUY, time_in_force=GTC, limit_price=limit)
    )
    assert resting.status == OrderStatus.NEW
    cash_before, orders_before = float(client.get_account().cash), all_orders(client)
    first.stop()

    second = start_exchange(start=None, **options)  # no --start: resume the saved clock
    client = TradingClient(KEY, SECRET, paper=True, url_override=second.base_url)
    assert client.get_clock().timestamp == FROZEN_AT
    assert all_orders(client) == orders_before and float(client.get_account().cash) == cash_before
    assert float(client.get_open_position("ETH/USDT").qty) == 1.0

    stream = CryptoDataStream(KEY, SECRET, url_override=second.data_stream_url)
    stream.subscribe_bars(Collector().handler("bars"), "BTC/USDT")
    with running(stream):
        filled = wait_for(
            lambda: (o := client.get_order_by_id(resting.id)).status == OrderStatus.FILLED and o, timeout=20
        )
    assert float(filled.filled_avg_price) == limit
    assert filled.filled_at == through["timestamp"] + timedelta(minutes=5)  # when that bar closed
    # a maker fill pays the configured maker rate (10 bp), not the taker rate
    assert float(client.get_account().cash) == pytest.approx(cash_before - 0.1 * limit * 1.001, abs=0.011)


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "crypto-pipeline"
    return [str(script)] if script.exists() else [sys.executable, "-m", "crypto_pipeline.cli"]


@pytest.fixture
def cli_exchange(
    capture_days_data: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """`crypto-pipeline exchange` in a subprocess, keys from the environment; its output lines as they come."""
    env = {**os.environ, "ALPACA_API_KEY": KEY, "ALPACA_SECRET_KEY": SECRET, "COLUMNS": "200"}
    command = [
        *_cli(),
        "exchange",
        "--port",
        "0",
        "--data",
        str(capture_days_data),
        "--no-capture",
        "--start",
        FROZEN_AT.isoformat(),
        "--speed",
        "0",
        "--db",
        str(tmp_path / "cli.sqlite"),
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        yield process, lines
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _listening_address(port: int) -> str:
    """The local address of the IPv4 socket listening on `port`, from /proc/net/tcp (hex, as the kernel
    writes it: 0100007F is 127.0.0.1)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":
            return address
    raise AssertionError(f"nothing listens on port {port}")


def test_the_cli_prints_how_to_connect_listens_on_loopback_and_a_killed_exchange_loses_nothing(
    cli_exchange: tuple[subprocess.Popen[str], list[str]],
    start_exchange: Callable[..., ExchangeServer],
    capture_days_data: Path,
    tmp_path: Path,
) -> None:
    process, lines = cli_exchange
    rest = wait_for(
        lambda: next((ln for ln in list(lines) if ln.strip().startswith("REST")), None), timeout=60
    )
    base_url = rest.split()[-1]  # type: ignore[union-attr]
    port = int(base_url.rsplit(":", 1)[-1])
    wait_for(lambda: _ready(base_url), timeout=30)
    output = "".join(lines)
    for expected in (
        f'TradingClient(os.environ["ALPACA_API_KEY"], os.environ["ALPACA_SECRET_KEY"], paper=True, '
        f'url_override="{base_url}")',
        f'CryptoHistoricalDataClient(os.environ["ALPACA_API_KEY"], os.environ["ALPACA_SECRET_KEY"], '
        f'url_override="{base_url}")',
        f'url_override="{base_url.replace("http", "ws")}/v1beta3/crypto/us")',
        f'url_override="{base_url.replace("http", "ws")}/stream")',
    ):
        assert expected in output
    assert SECRET not in output and KEY not in output
    assert base_url == f"http://127.0.0.1:{port}" and _listening_address(port) == "0100007F"

    client = TradingClient(KEY, SECRET, paper=True, url_override=base_url)
    bought = client.submit_order(MarketOrderRequest(symbol="ETH/USDT", qty=0.5, side=BUY, time_in_force=GTC))
    resting = client.submit_order(
        LimitOrderRequest(symbol="BTC/USDT", qty=0.01, side=BUY, time_in_force=GTC, limit_price=1_000.0)
    )
    orders_before, cash_before = all_orders(client), client.get_account().cash
    process.kill()  # no clean shutdown: nothing gets a chance to be saved now
    process.wait(timeout=10)

    again = start_exchange(
        db_path=tmp_path / "cli.sqlite", data_dir=capture_days_data, capture_dir=None, start=None, speed=0.0
    )
    client = TradingClient(KEY, SECRET, paper=True, url_override=again.base_url)
    assert all_orders(client) == orders_before and client.get_account().cash == cash_before
    assert orders_before[bought.id].status == OrderStatus.FILLED
    assert float(client.get_open_position("ETH/USDT").qty) == 0.5
    assert client.get_order_by_id(resting.id).status == OrderStatus.NEW
    # no clock was saved, so the clock resumes at the last moment the account shows, not at the data's start
    assert client.get_clock().timestamp == FROZEN_AT


def _ready(base_url: str) -> bool:
    try:
        return bool(httpx.get(base_url + "/healthz", timeout=1.0).json().get("replay_ready"))
    except httpx.HTTPError:
        return False


def test_the_cli_refuses_bad_input_with_one_clear_message(
    monkeypatch: pytest.MonkeyPatch, capture_days_data: Path
) -> None:
    keys = ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "CRYPTO_PIPELINE_ALPACA_API_KEY", "CRYPTO_PIPELINE_ALPACA_SECRET_KEY")
    for name in (*keys, "CRYPTO_PIPELINE_EXCHANGE__KEY", "CRYPTO_PIPELINE_EXCHANGE__SECRET"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner(env={"COLUMNS": "300"})
    started = time.monotonic()
    no_keys = runner.invoke(app, ["exchange", "--port", "0", "--data", str(capture_days_data)])
    assert no_keys.exit_code == 2 and "the exchange needs keys" in no_keys.output
    bad_fault = runner.invoke(
        app, ["exchange", "--key", KEY, "--secret", SECRET, "--rest-error-codes", "404", "--port", "0"]
    )
    assert bad_fault.exit_code == 2 and "rest_error_codes must be among" in bad_fault.output
    assert SECRET not in bad_fault.output
    assert time.monotonic() - started < 10  # refused up front, nothing was started

"""A restart loses nothing, --reset starts afresh, and every fault mode does what it says."""

from __future__ import annotations

import time

import pytest
from alpaca.common.exceptions import APIError
from alpaca.data.historical.crypto import CryptoHistoricalDataClient
from alpaca.data.live.crypto import CryptoDataStream
from alpaca.data.requests import CryptoLatestBarRequest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest
from alpaca.trading.stream import TradingStream

from .conftest import KEY, SECRET, running, wait_for
from .test_streams import Collector


def small_data(capture_days_data) -> dict[str, object]:
    """Two symbols over twelve days: an exchange over them starts in a fraction of a second."""
    return {"data_dir": capture_days_data, "capture_dir": None, "start": "2024-08-05T12:00:00"}


def test_a_restart_loses_no_account_order_or_position_and_reset_starts_fresh(
    start_exchange, tmp_path, capture_days_data
) -> None:
    db = tmp_path / "durable.sqlite"
    first = start_exchange(db_path=db, speed=1.0, **small_data(capture_days_data))
    client = TradingClient(KEY, SECRET, paper=True, url_override=first.base_url)
    client.submit_order(
        MarketOrderRequest(symbol="ETH/USDT", qty=1.5, side=OrderSide.BUY, time_in_force=TimeInForce.GTC)
    )
    resting = client.submit_order(
        LimitOrderRequest(
            symbol="BTC/USDT", qty=0.01, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, limit_price=1000
        )
    )
    account_before = client.get_account()
    orders_before = {o.id: o.status for o in client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL))}
    first.stop()

    second = start_exchange(db_path=db, speed=1.0, **small_data(capture_days_data))
    client = TradingClient(KEY, SECRET, paper=True, url_override=second.base_url)
    assert client.get_account().id == account_before.id
    assert client.get_account().cash == account_before.cash
    assert {
        o.id: o.status for o in client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL))
    } == orders_before
    assert float(client.get_open_position("ETH/USDT").qty) == 1.5
    client.cancel_order_by_id(resting.id)  # the resting order is still live after the restart
    second.stop()

    fresh = start_exchange(db_path=db, speed=1.0, reset=True, **small_data(capture_days_data))
    client = TradingClient(KEY, SECRET, paper=True, url_override=fresh.base_url)
    assert client.get_account().id != account_before.id
    assert (
        client.get_all_positions() == []
        and client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL)) == []
    )


def test_injected_500s_reach_the_client_as_api_errors(start_exchange, capture_days_data) -> None:
    server = start_exchange(
        faults={"rest_error_rate": 1.0, "rest_error_codes": [500]}, **small_data(capture_days_data)
    )
    client = TradingClient(KEY, SECRET, paper=True, url_override=server.base_url)
    with pytest.raises(APIError) as error:
        client.get_account()
    assert error.value.status_code == 500
    assert server.venue.broker.orders == {}


@pytest.mark.slow  # waits out alpaca-py's 3 s retry
@pytest.mark.parametrize("status", [429, 504])
def test_injected_429_and_504_are_retried_by_the_client_and_then_succeed(
    start_exchange, capture_days_data, status: int
) -> None:
    # every second call fails: the client's built-in retry (3 s wait) gets the next one through
    server = start_exchange(
        faults={"rest_error_rate": 0.5, "rest_error_codes": [status]}, **small_data(capture_days_data)
    )
    client = TradingClient(KEY, SECRET, paper=True, url_override=server.base_url)
    client.get_clock()  # call 1 succeeds; the next call is the faulted one
    started = time.monotonic()
    assert client.get_account().status == "ACTIVE"
    assert time.monotonic() - started >= 2.5
    assert server.venue.rest_faults.injected == 1


@pytest.mark.slow  # waits out the injected latency
def test_injected_latency_slows_every_rest_call(start_exchange, capture_days_data) -> None:
    server = start_exchange(faults={"latency_ms": 300}, **small_data(capture_days_data))
    client = CryptoHistoricalDataClient(KEY, SECRET, url_override=server.base_url)
    started = time.monotonic()
    client.get_crypto_latest_bar(CryptoLatestBarRequest(symbol_or_symbols="BTC/USDT"))
    assert time.monotonic() - started >= 0.3


@pytest.mark.slow  # waits on the replay clock running in real time
def test_dropped_data_streams_are_reconnected_by_the_client(start_exchange) -> None:
    server = start_exchange(speed=3600.0, faults={"drop_ws_every_messages": 20})
    stream = CryptoDataStream(KEY, SECRET, url_override=server.data_stream_url)
    got = Collector()
    stream.subscribe_bars(got.handler("bars"), "*")
    with running(stream):
        hub = server.venue.data_hub
        wait_for(lambda: hub.drops >= 2 and hub.connections >= 3 and got.count("bars") > 40, timeout=30)


@pytest.mark.slow  # waits for drops after wall-clock seconds
def test_data_streams_are_dropped_after_the_configured_seconds(start_exchange) -> None:
    server = start_exchange(speed=3600.0, faults={"drop_ws_every_seconds": 0.5})
    stream = CryptoDataStream(KEY, SECRET, url_override=server.data_stream_url)
    got = Collector()
    stream.subscribe_bars(got.handler("bars"), "BTC/USDT")
    with running(stream):
        wait_for(
            lambda: server.venue.data_hub.drops >= 1 and server.venue.data_hub.connections >= 2, timeout=20
        )
        before = got.count("bars")
        wait_for(lambda: got.count("bars") > before, timeout=20)


@pytest.mark.slow  # waits for drops after wall-clock seconds
def test_idle_connections_are_dropped_by_the_seconds_fault_too(start_exchange, capture_days_data) -> None:
    # Real time from midnight: the next 5m bar closes 300 s away, so neither stream has anything to send.
    server = start_exchange(
        data_dir=capture_days_data, start="2024-08-02", speed=1.0, faults={"drop_ws_every_seconds": 0.5}
    )
    got = Collector()
    data_stream = CryptoDataStream(KEY, SECRET, url_override=server.data_stream_url)
    data_stream.subscribe_bars(got.handler("bars"), "BTC/USDT")
    trade_stream = TradingStream(KEY, SECRET, paper=True, url_override=server.trading_stream_url)
    trade_stream.subscribe_trade_updates(got.handler("updates"))
    data_hub, trade_hub = server.venue.data_hub, server.venue.trade_hub
    with running(data_stream), running(trade_stream):
        # a second drop means the client reconnected and the new, equally idle, connection was cut too
        wait_for(lambda: data_hub.drops >= 2 and trade_hub.drops >= 2, timeout=15)
    assert data_hub.messages_sent == 0 and got.count("bars") == 0 and got.count("updates") == 0
    assert data_hub.connections >= 2


def test_a_dropped_trade_updates_stream_is_reconnected_and_later_fills_arrive(
    start_exchange, capture_days_data
) -> None:
    # "listening" + "new" + "fill" are three messages: each connection is cut right after an order's fill
    server = start_exchange(speed=0.0, faults={"drop_ws_every_messages": 3}, **small_data(capture_days_data))
    trading = TradingClient(KEY, SECRET, paper=True, url_override=server.base_url)
    stream = TradingStream(KEY, SECRET, paper=True, url_override=server.trading_stream_url)
    got = Collector()
    stream.subscribe_trade_updates(got.handler("updates"))
    hub = server.venue.trade_hub
    request = MarketOrderRequest(
        symbol="ETH/USDT", qty=0.1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC
    )

    def events(order_id: object) -> list[str]:
        with got.lock:
            return [u.event for u in got.items["updates"] if u.order.id == order_id]

    with running(stream):
        wait_for(lambda: hub.listening == 1, timeout=10)
        first_connection = set(hub.listeners)
        first = trading.submit_order(request)
        wait_for(lambda: events(first.id) == ["new", "fill"] and hub.drops == 1, timeout=10)
        # a new connection, not the one that was cut, is listening again
        wait_for(
            lambda: any(li.listening and li not in first_connection for li in list(hub.listeners)), timeout=15
        )
        second = trading.submit_order(request)
        wait_for(lambda: events(second.id) == ["new", "fill"], timeout=10)

"""Both websockets, driven through alpaca-py's CryptoDataStream and TradingStream."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict

import pytest
from alpaca.data.live.crypto import CryptoDataStream
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest
from alpaca.trading.stream import TradingStream

from crypto_pipeline.exchange import ExchangeServer

from .conftest import KEY, SECRET, running, wait_for


class Collector:
    def __init__(self) -> None:
        self.items: dict[str, list[object]] = defaultdict(list)
        self.lock = threading.Lock()

    def handler(self, kind: str):  # noqa: ANN201
        async def collect(item: object) -> None:
            with self.lock:
                self.items[kind].append(item)

        return collect

    def count(self, kind: str) -> int:
        with self.lock:
            return len(self.items[kind])


@pytest.mark.slow  # waits on the replay clock running in real time
def test_data_stream_delivers_bars_quotes_trades_books_and_daily_bars(exchange: ExchangeServer) -> None:
    stream = CryptoDataStream(KEY, SECRET, url_override=exchange.data_stream_url)
    got = Collector()
    symbols = ("BTC/USDT", "AAVE/USDT")
    stream.subscribe_bars(got.handler("bars"), *symbols)
    stream.subscribe_quotes(got.handler("quotes"), *symbols)
    stream.subscribe_trades(got.handler("trades"), *symbols)
    stream.subscribe_orderbooks(got.handler("books"), *symbols)
    stream.subscribe_daily_bars(got.handler("daily"), "BTC/USDT")
    with running(stream):
        wait_for(
            lambda: all(got.count(k) >= 3 for k in ("bars", "quotes", "trades", "books", "daily")), timeout=20
        )
    with got.lock:
        bars, quotes, books = list(got.items["bars"]), list(got.items["quotes"]), list(got.items["books"])
    assert {b.symbol for b in bars} <= set(symbols)
    btc = [b for b in bars if b.symbol == "BTC/USDT"]
    assert all(later.timestamp > earlier.timestamp for earlier, later in zip(btc, btc[1:], strict=False))
    assert all(q.bid_price < q.ask_price for q in quotes)
    assert all(b.bids and b.asks and b.bids[0].price < b.asks[0].price for b in books)
    assert all(d.timestamp.hour == 0 and d.symbol == "BTC/USDT" for d in got.items["daily"])


@pytest.mark.slow  # waits on the replay clock running in real time
def test_unsubscribing_stops_that_channel(exchange: ExchangeServer) -> None:
    stream = CryptoDataStream(KEY, SECRET, url_override=exchange.data_stream_url)
    got = Collector()
    stream.subscribe_bars(got.handler("bars"), "ETH/USDT")
    stream.subscribe_quotes(got.handler("quotes"), "ETH/USDT")
    with running(stream):
        wait_for(lambda: got.count("bars") >= 2, timeout=20)
        stream.unsubscribe_bars("ETH/USDT")
        settled = got.count("bars")
        quotes_then = got.count("quotes")
        wait_for(lambda: got.count("quotes") >= quotes_then + 5, timeout=20)
        # at most one batch was already on the wire when the unsubscribe arrived
        assert got.count("bars") <= settled + 1


def test_data_stream_refuses_wrong_keys(exchange: ExchangeServer) -> None:
    stream = CryptoDataStream(KEY, "wrong", url_override=exchange.data_stream_url)
    failures = exchange.venue.data_hub.auth_failures

    async def connect() -> None:
        try:
            await stream._start_ws()  # the client's own connect + auth handshake
        finally:
            await stream.close()

    with pytest.raises(ValueError, match="auth failed"):
        asyncio.run(connect())
    assert exchange.venue.data_hub.auth_failures == failures + 1


def test_a_fill_arrives_on_trade_updates(exchange: ExchangeServer, trading: TradingClient) -> None:
    stream = TradingStream(KEY, SECRET, paper=True, url_override=exchange.trading_stream_url)
    got = Collector()
    stream.subscribe_trade_updates(got.handler("updates"))
    listening = exchange.venue.trade_hub.listening
    with running(stream):
        wait_for(lambda: exchange.venue.trade_hub.listening > listening, timeout=10)
        order = trading.submit_order(
            MarketOrderRequest(
                symbol="BTC/USDT", qty=0.001, side=OrderSide.BUY, time_in_force=TimeInForce.GTC
            )
        )
        wait_for(
            lambda: any(u.order.id == order.id and u.event == "fill" for u in got.items["updates"]),
            timeout=10,
        )
    mine = [u for u in got.items["updates"] if u.order.id == order.id]
    assert [u.event for u in mine] == ["new", "fill"]
    fill = mine[-1]
    assert fill.qty == pytest.approx(0.001) and fill.price == pytest.approx(
        float(fill.order.filled_avg_price)
    )
    assert fill.position_qty >= 0.001 and fill.execution_id is not None


def test_trade_updates_refuse_wrong_keys(exchange: ExchangeServer) -> None:
    stream = TradingStream(KEY, "wrong", paper=True, url_override=exchange.trading_stream_url)
    failures = exchange.venue.trade_hub.auth_failures

    async def connect() -> None:
        try:
            await stream._start_ws()
        finally:
            await stream.close()

    with pytest.raises(ValueError, match="failed to authenticate"):
        asyncio.run(connect())
    assert exchange.venue.trade_hub.auth_failures == failures + 1

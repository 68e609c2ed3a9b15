"""A malformed market data message is logged and skipped, and costs no other message. The exchange
cannot send one, so a websocket proxy between it and the client slips two into a real frame."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import msgpack
import polars as pl
import pytest
from alpaca.data.historical.crypto import CryptoHistoricalDataClient
from alpaca.data.requests import CryptoLatestOrderbookRequest
from pydantic import SecretStr
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from crypto_pipeline.live.session import LiveSession
from crypto_pipeline.live.streams import parse_stream_bar
from crypto_pipeline.live.venue import Clients, Credentials, Endpoints
from crypto_pipeline.warehouse import Warehouse

from .conftest import KEY, SECRET, START, AlwaysBuy, Running, live_config

MALFORMED = [
    {"T": "b", "S": "BTC/USDT", "t": "not a time", "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 1.0},
    {"T": "b", "S": "ETH/USDT", "t": None, "o": "x", "h": 2.0, "l": 3.0, "c": 1.0, "v": -1.0},
]


class InjectingProxy:
    """Forwards the market data websocket both ways; adds `messages` (MALFORMED) to the first frame
    holding every message type of `trigger` (bars)."""

    def __init__(
        self, upstream: str, messages: list[dict] = MALFORMED, trigger: tuple[str, ...] = ("b",)
    ) -> None:
        self.upstream = upstream
        self.messages, self.trigger = messages, trigger
        self.injected = 0
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _pipe(self, client) -> None:  # noqa: ANN001 - websockets connection
        async with connect(self.upstream, max_size=None) as upstream:

            async def up() -> None:
                async for frame in client:
                    await upstream.send(frame)

            async def down() -> None:
                async for frame in upstream:
                    messages = msgpack.unpackb(frame, timestamp=3)
                    kinds = {m.get("T") for m in messages}
                    if not self.injected and kinds.issuperset(self.trigger):
                        self.injected = len(self.messages)
                        frame = msgpack.packb(self.messages + messages, datetime=True)
                    await client.send(frame)

            tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with serve(self._pipe, "127.0.0.1", 0, max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    @contextlib.contextmanager
    def running(self) -> Iterator[str]:
        self.thread.start()
        self._ready.wait(10)
        try:
            yield f"ws://127.0.0.1:{self.port}/v1beta3/crypto/us"
        finally:
            assert self._loop is not None and self._stop is not None
            self._loop.call_soon_threadsafe(self._stop.set)
            self.thread.join(10)


def test_a_malformed_message_is_logged_and_skipped_and_costs_no_other(
    start_exchange, tmp_path, caplog
) -> None:
    server = start_exchange()
    proxy = InjectingProxy(server.data_stream_url)
    with proxy.running() as proxied:
        endpoints = Endpoints("local", server.base_url, server.base_url, proxied, server.trading_stream_url)
        clients = Clients.connect(endpoints, Credentials(SecretStr(KEY), SecretStr(SECRET)))
        session = LiveSession(live_config(), clients, AlwaysBuy(), Warehouse(tmp_path / "wh"))
        with (
            caplog.at_level(logging.WARNING, logger="crypto_pipeline.live"),
            Running(session, server) as running,
        ):
            running.step(1)
    assert proxy.injected == 2
    assert session.report.malformed_messages == 2
    skipped = [
        r.getMessage() for r in caplog.records if "malformed market data message skipped" in r.getMessage()
    ]
    assert len(skipped) == 2 and "bad time" in skipped[0]
    # The real bars of that frame all arrived by the stream: no gap needed backfilling.
    assert session.report.gaps_backfilled == 0
    hour = session.buffer.frame(closed_by=START + timedelta(hours=1)).filter(pl.col("timestamp") >= START)
    assert hour.height == 24 and session.report.stream_bars == 24


@pytest.mark.parametrize("message", MALFORMED)
def test_the_bar_check_says_what_is_wrong(message) -> None:
    with pytest.raises(ValueError, match="bad time"):
        parse_stream_bar(dict(message))


BAD_BOOK_AND_QUOTE = [
    # an update (no "r") whose level has no price: BTC's book is unknown until a full one comes
    {"T": "o", "S": "BTC/USDT", "t": START, "b": [{"p": None, "s": 1.0}], "a": []},
    {"T": "q", "S": "ETH/USDT", "t": START, "bp": "1", "bs": 1.0, "ap": 2.0, "as": 1.0},
]


def test_a_malformed_book_or_quote_is_skipped_and_a_book_it_left_unknown_is_fetched_again(
    start_exchange, tmp_path, caplog
) -> None:
    server = start_exchange()
    # Injected into a replay step's frame (bars and books), after the full books sent on subscribe.
    proxy = InjectingProxy(server.data_stream_url, BAD_BOOK_AND_QUOTE, trigger=("b", "o"))
    with proxy.running() as proxied:
        endpoints = Endpoints("local", server.base_url, server.base_url, proxied, server.trading_stream_url)
        clients = Clients.connect(endpoints, Credentials(SecretStr(KEY), SecretStr(SECRET)))
        session = LiveSession(live_config(), clients, AlwaysBuy(), Warehouse(tmp_path / "wh"))
        with (
            caplog.at_level(logging.INFO, logger="crypto_pipeline.live"),
            Running(session, server) as running,
        ):
            running.step(1)
            rest = CryptoHistoricalDataClient(KEY, SECRET, url_override=server.base_url)
            book = rest.get_crypto_latest_orderbook(
                CryptoLatestOrderbookRequest(symbol_or_symbols="BTC/USDT")
            )
            expected = (
                [(lv.price, lv.size) for lv in book["BTC/USDT"].bids],
                [(lv.price, lv.size) for lv in book["BTC/USDT"].asks],
            )
            assert session.books.top("BTC/USDT", 50) == expected
            # Full books: one per symbol on subscribe, one per 5m bar of the hour (the exchange's book of
            # a bar-only symbol), and one more for BTC, which the session subscribed again after the skip.
            deadline = time.monotonic() + 30
            while session.books.counts.book_resets < 2 + 24 + 1:
                assert time.monotonic() < deadline, f"{session.books.counts.book_resets} full books"
                time.sleep(0.02)
    assert proxy.injected == 2
    assert session.report.malformed_messages == 2 and session.report.books_resubscribed == 1
    messages = [r.getMessage() for r in caplog.records]
    skipped = [m for m in messages if "malformed market data message skipped" in m]
    assert len(skipped) == 2 and "bad b price" in skipped[0] and "bad bp" in skipped[1]
    assert any("order book of BTC/USDT unknown" in m for m in messages)
    assert (
        session.books.counts.book_resets == 2 + 24 + 1
        and session.books.counts.books_lost == 1
        and session.books.quote("ETH/USDT") is not None
    )
    assert session.report.stream_bars == 24 and session.report.gaps_backfilled == 0

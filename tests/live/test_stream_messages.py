"""A malformed market data message is logged and skipped, and costs no other message. The exchange
cannot send one, so a websocket proxy between it and the client slips two into a real frame."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta

import msgpack
import polars as pl
import pytest
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
    """Forwards the market data websocket both ways; adds MALFORMED to the first frame holding bars."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
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
                    if not self.injected and any(m.get("T") == "b" for m in messages):
                        self.injected = len(MALFORMED)
                        frame = msgpack.packb(MALFORMED + messages, datetime=True)
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

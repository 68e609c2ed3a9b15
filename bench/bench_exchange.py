"""Benchmarks of the local exchange through the real alpaca-py clients.

1. Market data fan-out: a CryptoDataStream subscribed to bars, quotes and trades of all 136 symbols,
   the replay clock running as fast as the client reads (speed 0) until the data runs out; messages/s
   delivered and messages lost (queued for the client by the server minus received by its handlers).
   Reference: the same msgpack frames pushed by a bare `websockets` server to a bare client.
2. Order round trips: TradingClient.submit_order -> the fill event on TradingStream, one at a time.
   Reference: a bare HTTP round trip (GET /healthz) to the same server with a keep-alive session.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import requests
import websockets
from alpaca.data.live.crypto import CryptoDataStream
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest
from alpaca.trading.stream import TradingStream

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import BenchResult, print_table  # noqa: E402
from crypto_pipeline.config import SHARED_MARKET_DATA  # noqa: E402
from crypto_pipeline.exchange import ExchangeConfig, ExchangeServer  # noqa: E402

KEY, SECRET = "bench-key", "bench-secret"


def _config(db: Path, **overrides: object) -> ExchangeConfig:
    values: dict[str, object] = {
        "port": 0,
        "key": KEY,
        "secret": SECRET,
        "db_path": db,
        "data_dir": SHARED_MARKET_DATA / "binance-spot-2024",
    }
    values.update(overrides)
    return ExchangeConfig(**values)


def _run_stream(stream: object) -> threading.Thread:
    thread = threading.Thread(target=stream.run, daemon=True)  # type: ignore[attr-defined]
    thread.start()
    return thread


def _stop_stream(stream: object, thread: threading.Thread) -> None:
    with contextlib.suppress(Exception):
        stream.stop()  # type: ignore[attr-defined]
    thread.join(timeout=10)


def fan_out(start: str, workdir: Path) -> tuple[float, int, int, list[bytes]]:
    """Messages/s received by alpaca-py's handlers, messages lost, total sent, and sample frames."""
    with ExchangeServer(_config(workdir / "fanout.sqlite", start=start, speed=0.0)) as server:
        symbols = server.venue.market.symbols()
        stream = CryptoDataStream(KEY, SECRET, url_override=server.data_stream_url)
        received = 0
        first_at: list[float] = []
        last_at = [0.0]

        async def count(_: object) -> None:
            nonlocal received
            received += 1
            now = time.perf_counter()
            if not first_at:
                first_at.append(now)
            last_at[0] = now

        stream.subscribe_bars(count, *symbols)
        stream.subscribe_quotes(count, *symbols)
        stream.subscribe_trades(count, *symbols)
        thread = _run_stream(stream)
        hub, replayer = server.venue.data_hub, server.venue.replayer
        while not (replayer.exhausted and hub.subscribers):
            time.sleep(0.2)
        sent = hub.messages_sent
        # let the client drain what is already on the wire
        settled = -1
        while settled != received:
            settled = received
            time.sleep(1.0)
        _stop_stream(stream, thread)
        rate = received / (last_at[0] - first_at[0]) if first_at else 0.0
        # sample frames of the real stream's shape for the reference
        sample = _sample_frames(server, symbols)
        return rate, sent - received, sent, sample


def _sample_frames(server: ExchangeServer, symbols: list[str]) -> list[bytes]:
    from crypto_pipeline.exchange.data_wire import stream_message, stream_time
    from crypto_pipeline.exchange.streams import MESSAGES_PER_FRAME, pack

    replay = server.venue.replayer
    now = server.venue.clock.now_ns()
    bars = [b for s in symbols if (b := server.venue.market.last_bar(s, now)) is not None]
    messages = []
    for bar in bars:
        messages.append(replay.bar_message("b", bar))
        messages.append(stream_message("t", bar.symbol, server.venue.market.latest_trade(bar, stream_time)))
        messages.append(stream_message("q", bar.symbol, server.venue.market.latest_quote(bar, stream_time)))
    return [pack(messages[i : i + MESSAGES_PER_FRAME]) for i in range(0, len(messages), MESSAGES_PER_FRAME)]


def raw_push_reference(frames: list[bytes], total_messages: int) -> float:
    """Messages/s when a bare websockets server pushes the same frames to a bare msgpack-decoding client."""
    per_round = sum(len(msgpack.unpackb(f)) for f in frames)
    rounds = max(1, total_messages // per_round)

    async def main() -> float:
        async def push(connection: websockets.ServerConnection) -> None:
            for _ in range(rounds):
                for frame in frames:
                    await connection.send(frame)
            await connection.close()

        async with websockets.serve(push, "127.0.0.1", 0, max_size=2**24) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            count = 0
            started = time.perf_counter()
            async with websockets.connect(f"ws://127.0.0.1:{port}", max_size=2**24) as client:
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for frame in client:
                        count += len(msgpack.unpackb(frame))
            return count / (time.perf_counter() - started)

    return asyncio.run(main())


def raw_echo_reference(frames: list[bytes], round_trips: int) -> float:
    """Messages/s through a bare websockets echo: send a frame, wait for it to come back, decode it."""
    counts = [len(msgpack.unpackb(f)) for f in frames]

    async def main() -> float:
        async def echo(connection: websockets.ServerConnection) -> None:
            async for frame in connection:
                await connection.send(frame)

        async with websockets.serve(echo, "127.0.0.1", 0, max_size=2**24) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            count = 0
            async with websockets.connect(f"ws://127.0.0.1:{port}", max_size=2**24) as client:
                started = time.perf_counter()
                for i in range(round_trips):
                    await client.send(frames[i % len(frames)])
                    count += len(msgpack.unpackb(await client.recv()))
                elapsed = time.perf_counter() - started
            assert count == sum(counts[i % len(frames)] for i in range(round_trips))
            return count / elapsed

    return asyncio.run(main())


def order_round_trips(n: int, workdir: Path) -> tuple[float, float]:
    """Orders/s submit -> fill event, and bare HTTP round trips/s on the same server."""
    with ExchangeServer(_config(workdir / "orders.sqlite", start="2024-06-01", speed=1.0)) as server:
        trading = TradingClient(KEY, SECRET, paper=True, url_override=server.base_url)
        stream = TradingStream(KEY, SECRET, paper=True, url_override=server.trading_stream_url)
        fills: set[str] = set()
        filled = threading.Condition()

        async def on_update(update: object) -> None:
            if update.event == "fill":  # type: ignore[attr-defined]
                with filled:
                    fills.add(str(update.order.id))  # type: ignore[attr-defined]
                    filled.notify_all()

        stream.subscribe_trade_updates(on_update)
        thread = _run_stream(stream)
        while server.venue.trade_hub.listening == 0:
            time.sleep(0.01)
        started = time.perf_counter()
        for i in range(n):
            side = OrderSide.BUY if i % 2 == 0 else OrderSide.SELL
            order = trading.submit_order(
                MarketOrderRequest(symbol="BTC/USDT", qty=0.001, side=side, time_in_force=TimeInForce.GTC)
            )
            with filled:
                if not filled.wait_for(lambda oid=str(order.id): oid in fills, timeout=10):
                    raise RuntimeError(f"no fill event for order {order.id}")
        orders_per_s = n / (time.perf_counter() - started)
        _stop_stream(stream, thread)

        session = requests.Session()
        started = time.perf_counter()
        for _ in range(n):
            session.get(server.base_url + "/healthz").raise_for_status()
        http_per_s = n / (time.perf_counter() - started)
        return orders_per_s, http_per_s


def run(quick: bool = False) -> list[BenchResult]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        start = "2024-09-05" if quick else "2024-09-02"
        rate, lost, sent, frames = fan_out(start, workdir)
        reference = raw_push_reference(frames, sent)
        echo = raw_echo_reference(frames, 500 if quick else 2000)
        orders, http = order_round_trips(100 if quick else 300, workdir)
    return [
        BenchResult(
            name="market data fan-out to CryptoDataStream (136 symbols, b+q+t, max replay speed)",
            figure=rate,
            unit="msg/s",
            reference_name="bare websockets push of the same msgpack frames",
            reference=reference,
            target=">= 10,000 msg/s with 0 lost",
            note=f"{sent:,} sent, {lost:,} lost",
        ),
        BenchResult(
            name="market data fan-out to CryptoDataStream (same run as above)",
            figure=rate,
            unit="msg/s",
            reference_name="bare websockets echo round trips of the same frames",
            reference=echo,
            target="report",
            note="echo waits for each frame to come back; the push above is the stricter reference",
        ),
        BenchResult(
            name="order round trip: TradingClient submit -> fill on TradingStream",
            figure=orders,
            unit="orders/s",
            reference_name="bare HTTP GET round trip, same server",
            reference=http,
            target=">= 0.25x reference",
        ),
    ]


if __name__ == "__main__":
    print_table(run(quick="--quick" in sys.argv))

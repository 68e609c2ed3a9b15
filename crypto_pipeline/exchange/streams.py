"""The two websockets: the msgpack market data stream (`/v1beta3/crypto/us`) and the JSON
`trade_updates` stream (`/stream`), with their subscribers, authentication and fault drops."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import msgpack
from starlette.websockets import WebSocket, WebSocketDisconnect

from crypto_pipeline.exchange.config import FaultConfig
from crypto_pipeline.exchange.faults import StreamDropper, drop_after

log = logging.getLogger(__name__)

CHANNELS = ("trades", "quotes", "orderbooks", "bars", "updatedBars", "dailyBars")
Batch = tuple[list[dict[str, object]], int]
AUTH_TIMEOUT_S = 10.0
QUEUE_FRAMES = 64
# The alpaca-py client accepts frames up to 1 MiB; a few hundred messages stay far below it.
MESSAGES_PER_FRAME = 400


class Credentials:
    def __init__(self, key: str, secret: str) -> None:
        self._key = key.encode()
        self._secret = secret.encode()

    def valid(self, key: object, secret: object) -> bool:
        if not isinstance(key, str) or not isinstance(secret, str):
            return False
        # Both comparisons always run, in constant time: no timing hint about which part was wrong.
        key_ok = hmac.compare_digest(key.encode(), self._key)
        secret_ok = hmac.compare_digest(secret.encode(), self._secret)
        return key_ok and secret_ok


def pack(messages: list[dict[str, object]]) -> bytes:
    return msgpack.packb(messages, datetime=True)


@dataclass(eq=False)
class DataSubscriber:
    websocket: WebSocket
    subscriptions: dict[str, set[str]] = field(default_factory=lambda: {c: set() for c in CHANNELS})
    # (messages, how many of them are market data): packed by the writer, which merges waiting batches.
    queue: asyncio.Queue[Batch] = field(default_factory=lambda: asyncio.Queue(QUEUE_FRAMES))
    sent_messages: int = 0
    closed: bool = False

    def wants(self, channel: str, symbol: str) -> bool:
        chosen = self.subscriptions[channel]
        return symbol in chosen or "*" in chosen

    @property
    def reads_anything(self) -> bool:
        return any(self.subscriptions.values())

    def subscription_message(self) -> dict[str, object]:
        return {"T": "subscription", **{c: sorted(self.subscriptions[c]) for c in CHANNELS}}


class MarketDataHub:
    """Authenticated market data subscribers; the replayer hands it batches and waits for room."""

    def __init__(self, credentials: Credentials, faults: FaultConfig) -> None:
        self.credentials = credentials
        self.faults = faults
        self.subscribers: set[DataSubscriber] = set()
        self.auth_failures = 0
        self.messages_sent = 0
        self.connections = 0
        self.drops = 0
        # Set by the venue: answers an orderbooks subscription with the current full book.
        self.book_snapshots: Callable[[list[str]], list[dict[str, object]]] = lambda symbols: []

    @property
    def has_readers(self) -> bool:
        """Someone has subscribed to something: what an as-fast-as-read clock waits for (a client between
        authenticating and subscribing would otherwise see the replay race past)."""
        return any(subscriber.reads_anything for subscriber in self.subscribers)

    def wanted(self, channel: str) -> set[str]:
        wanted: set[str] = set()
        for subscriber in self.subscribers:
            wanted |= subscriber.subscriptions[channel]
        return wanted

    async def broadcast(self, messages: Iterable[tuple[str, str, dict[str, object]]]) -> None:
        """Deliver (channel, symbol, message) triples to whoever subscribed; waits on slow readers."""
        messages = list(messages)
        for subscriber in list(self.subscribers):
            chosen = [m for channel, symbol, m in messages if subscriber.wants(channel, symbol)]
            for start in range(0, len(chosen), MESSAGES_PER_FRAME):
                if subscriber.closed:
                    break
                part = chosen[start : start + MESSAGES_PER_FRAME]
                await subscriber.queue.put((part, len(part)))
                subscriber.sent_messages += len(part)
                self.messages_sent += len(part)

    async def serve(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.connections += 1
        await websocket.send_bytes(pack([{"T": "success", "msg": "connected"}]))
        try:
            first = await asyncio.wait_for(self._receive(websocket), AUTH_TIMEOUT_S)
        except (TimeoutError, WebSocketDisconnect, ValueError):
            await _close(websocket)
            return
        if first.get("action") != "auth":
            await websocket.send_bytes(pack([{"T": "error", "code": 401, "msg": "not authenticated"}]))
            await _close(websocket)
            return
        if not self.credentials.valid(first.get("key"), first.get("secret")):
            self.auth_failures += 1
            await websocket.send_bytes(pack([{"T": "error", "code": 402, "msg": "auth failed"}]))
            await _close(websocket)
            return
        await websocket.send_bytes(pack([{"T": "success", "msg": "authenticated"}]))
        subscriber = DataSubscriber(websocket)
        self.subscribers.add(subscriber)
        writer = asyncio.create_task(self._write(subscriber))
        timer = _drop_timer(self.faults, lambda: self._drop(subscriber))
        try:
            while not subscriber.closed:
                message = await self._receive(websocket)
                await self._handle_control(subscriber, message)
        except (WebSocketDisconnect, RuntimeError, ValueError):
            pass
        finally:
            await self._retire(subscriber)
            for task in (writer, timer):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _handle_control(self, subscriber: DataSubscriber, message: dict[str, object]) -> None:
        action = message.get("action")
        if action not in ("subscribe", "unsubscribe"):
            await subscriber.queue.put(([{"T": "error", "code": 400, "msg": "invalid syntax"}], 0))
            return
        added_books: list[str] = []
        for channel in CHANNELS:
            symbols = message.get(channel) or []
            if not isinstance(symbols, list):
                continue
            names = {str(s) for s in symbols}
            if action == "subscribe":
                if channel == "orderbooks":
                    added_books = sorted(names - subscriber.subscriptions[channel])
                subscriber.subscriptions[channel] |= names
            else:
                subscriber.subscriptions[channel] -= names
        await subscriber.queue.put(([subscriber.subscription_message()], 0))
        if added_books:
            snapshots = self.book_snapshots(added_books)
            if snapshots:
                await subscriber.queue.put((snapshots, len(snapshots)))

    async def _write(self, subscriber: DataSubscriber) -> None:
        dropper = StreamDropper(self.faults)
        carry: Batch | None = None
        try:
            while True:
                messages, counted = carry if carry is not None else await subscriber.queue.get()
                carry, messages = None, list(messages)
                # Merge the batches already waiting into one frame: a reader that falls behind gets
                # fewer, larger frames (the per-frame syscall and compression are shared), an idle one
                # gets each batch at once.
                while not subscriber.queue.empty():
                    more, more_counted = subscriber.queue.get_nowait()
                    if len(messages) + len(more) > MESSAGES_PER_FRAME:
                        carry = (more, more_counted)
                        break
                    messages += more
                    counted += more_counted
                await subscriber.websocket.send_bytes(pack(messages))
                dropper.count(counted)
                if dropper.should_drop():
                    await self._drop(subscriber)
                    return
        except (WebSocketDisconnect, RuntimeError, OSError):
            await self._retire(subscriber)

    async def _drop(self, subscriber: DataSubscriber) -> None:
        """The fault: cut the connection (1011) as a failing server would; the client reconnects."""
        if subscriber.closed:
            return
        self.drops += 1
        await self._retire(subscriber)
        await _close(subscriber.websocket, code=1011)

    async def _retire(self, subscriber: DataSubscriber) -> None:
        if subscriber.closed:
            return
        subscriber.closed = True
        self.subscribers.discard(subscriber)
        # Free a replayer that may be waiting for room in this queue.
        while not subscriber.queue.empty():
            subscriber.queue.get_nowait()

    @staticmethod
    async def _receive(websocket: WebSocket) -> dict[str, object]:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        raw = message.get("bytes") if message.get("bytes") is not None else message.get("text")
        if raw is None:
            raise ValueError("empty frame")
        decoded = msgpack.unpackb(raw) if isinstance(raw, bytes) else json.loads(raw)
        if not isinstance(decoded, dict):
            raise ValueError("a control message must be a map")
        return decoded


@dataclass(eq=False)
class TradeListener:
    websocket: WebSocket
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    listening: bool = False


class TradeUpdatesHub:
    """The account's `trade_updates` listeners."""

    def __init__(self, credentials: Credentials, faults: FaultConfig) -> None:
        self.credentials = credentials
        self.faults = faults
        self.listeners: set[TradeListener] = set()
        self.auth_failures = 0
        self.events_published = 0
        self.drops = 0

    @property
    def listening(self) -> int:
        return sum(1 for listener in self.listeners if listener.listening)

    def publish(self, update: dict[str, object]) -> None:
        text = json.dumps(update)
        self.events_published += 1
        for listener in self.listeners:
            if listener.listening:
                listener.queue.put_nowait(text)

    async def serve(self, websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            first = await asyncio.wait_for(_receive_json(websocket), AUTH_TIMEOUT_S)
        except (TimeoutError, WebSocketDisconnect, ValueError):
            await _close(websocket)
            return
        data = first.get("data") if isinstance(first.get("data"), dict) else {}
        authorized = first.get("action") in ("authenticate", "auth") and self.credentials.valid(
            data.get("key_id"),
            data.get("secret_key"),  # type: ignore[union-attr]
        )
        status = "authorized" if authorized else "unauthorized"
        reply = {"stream": "authorization", "data": {"action": "authenticate", "status": status}}
        await websocket.send_text(json.dumps(reply))
        if not authorized:
            self.auth_failures += 1
            await _close(websocket, code=1008)
            return
        listener = TradeListener(websocket)
        self.listeners.add(listener)
        writer = asyncio.create_task(self._write(listener))
        timer = _drop_timer(self.faults, lambda: self._drop(listener))
        try:
            while True:
                message = await _receive_json(websocket)
                streams = (message.get("data") or {}).get("streams", [])  # type: ignore[union-attr]
                if message.get("action") == "listen" and isinstance(streams, list):
                    listener.listening = "trade_updates" in streams
                    chosen = ["trade_updates"] if listener.listening else []
                    listener.queue.put_nowait(
                        json.dumps({"stream": "listening", "data": {"streams": chosen}})
                    )
        except (WebSocketDisconnect, RuntimeError, ValueError):
            pass
        finally:
            self.listeners.discard(listener)
            for task in (writer, timer):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _write(self, listener: TradeListener) -> None:
        dropper = StreamDropper(self.faults)
        try:
            while True:
                text = await listener.queue.get()
                await listener.websocket.send_text(text)
                dropper.count(1)
                if dropper.should_drop():
                    await self._drop(listener)
                    return
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.listeners.discard(listener)

    async def _drop(self, listener: TradeListener) -> None:
        if listener not in self.listeners:
            return
        self.drops += 1
        self.listeners.discard(listener)
        await _close(listener.websocket, code=1011)


async def _receive_json(websocket: WebSocket) -> dict[str, object]:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    raw = message.get("text") if message.get("text") is not None else message.get("bytes")
    decoded = json.loads(raw) if raw is not None else None
    if not isinstance(decoded, dict):
        raise ValueError("a control message must be a JSON object")
    return decoded


def _drop_timer(faults: FaultConfig, drop: Callable[[], Awaitable[None]]) -> asyncio.Task[None] | None:
    if not faults.drop_ws_every_seconds:
        return None
    return asyncio.create_task(drop_after(faults.drop_ws_every_seconds, drop))


async def _close(websocket: WebSocket, code: int = 1000) -> None:
    with contextlib.suppress(Exception):
        await websocket.close(code=code)

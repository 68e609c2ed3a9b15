"""alpaca-py's websocket clients in background threads, and the one check of a stream bar message.

The clients reconnect by themselves with exponential backoff; what a dropped connection lost, the
live loop finds as a gap in the bar buffer and backfills through REST."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)


class StreamThread:
    """Runs `stream.run()` in a daemon thread; `stop()` ends it promptly. `connections` counts the
    websocket connections the client opened (every one after the first is a reconnect)."""

    def __init__(self, stream: Any, name: str) -> None:
        self.stream = stream
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.connections = 0
        # alpaca-py's clients open every connection, first or again, through `_start_ws`; counting
        # there is the only way to see reconnects, which the clients otherwise handle silently.
        start_ws = getattr(stream, "_start_ws", None)
        if start_ws is not None:

            async def counted() -> None:
                await start_ws()
                self.connections += 1

            stream._start_ws = counted

    def _run(self) -> None:
        try:
            self.stream.run()
        except Exception:  # noqa: BLE001 - a dead stream shows as stale data, which the loop handles
            log.exception("%s ended with an error", self.thread.name)

    def start(self) -> StreamThread:
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + 5
        while getattr(self.stream, "_loop", None) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        with contextlib.suppress(Exception):
            self.stream.stop()
        # A stop is noticed when a receive times out (5 s): closing the socket ends it at once.
        loop = getattr(self.stream, "_loop", None)
        with contextlib.suppress(RuntimeError, AttributeError):
            loop.call_soon_threadsafe(lambda: loop.create_task(self.stream.close()))
        self.thread.join(timeout=timeout)


def parse_stream_bar(message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(symbol, bar) from one raw `b` message; ValueError says what is wrong with a malformed one."""
    symbol = message.get("S")
    if not isinstance(symbol, str) or not symbol:
        raise ValueError("no symbol")
    stamp = message.get("t")
    if hasattr(stamp, "to_datetime"):
        stamp = stamp.to_datetime()
    if not isinstance(stamp, datetime):
        raise ValueError(f"bad time {type(stamp).__name__}")
    stamp = stamp.astimezone(UTC) if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    values: dict[str, Any] = {}
    for wire, name in (("o", "open"), ("h", "high"), ("l", "low"), ("c", "close"), ("v", "volume")):
        value = message.get(wire)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"bad {name} {value!r}")
        values[name] = float(value)
    if values["volume"] < 0 or values["low"] <= 0:
        raise ValueError("price not positive or volume negative")
    if (
        not values["low"]
        <= min(values["open"], values["close"])
        <= max(values["open"], values["close"])
        <= values["high"]
    ):
        raise ValueError("OHLC out of order")
    for wire, name in (("n", "trade_count"), ("vw", "vwap")):
        value = message.get(wire)
        values[name] = float(value) if isinstance(value, int | float) and math.isfinite(value) else None
    return symbol, {"timestamp": stamp, **values}


class _NoOutgoingFrames(logging.Filter):
    """websockets logs every frame it sends at DEBUG, abbreviated in the middle: the authentication
    frame would put the end of the secret key (or its bytes, in hex) into a log. Outgoing data frames
    are ours (auth, subscribe): none is worth a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != "> %s" or not record.args:
            return True
        frame = record.args[0] if isinstance(record.args, tuple) else record.args
        return not str(frame).startswith(("TEXT", "BINARY"))


_FRAME_FILTER = _NoOutgoingFrames()


def keep_keys_out_of_websocket_logs() -> None:
    """Install the filter on the websocket client loggers alpaca-py's streams use (idempotent)."""
    for name in ("websockets.client", "websockets.protocol"):
        logger = logging.getLogger(name)
        if _FRAME_FILTER not in logger.filters:
            logger.addFilter(_FRAME_FILTER)

"""Fault injection: REST errors (429/500/504...) on an evenly spread share of calls, added latency, and
websocket drops every N messages or S seconds (a timer: idle connections are cut too). Deterministic, so
drills and tests repeat exactly."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

from crypto_pipeline.exchange.config import FaultConfig

_ERROR_BODIES = {
    429: {"code": 42910000, "message": "rate limit exceeded"},
    500: {"code": 50010000, "message": "internal server error"},
    502: {"code": 50210000, "message": "bad gateway"},
    503: {"code": 50310000, "message": "service unavailable"},
    504: {"code": 50410000, "message": "gateway timeout"},
}


class RestFaults:
    """Decides, call by call, whether to answer with an injected error."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self.calls = 0
        self.injected = 0

    def next_error(self) -> tuple[int, dict[str, object]] | None:
        """The n-th call fails when floor((n + 1) x rate) > floor(n x rate): exactly `rate` of calls,
        spread evenly (rate 0.5 fails every second call), cycling through the configured codes."""
        rate = self.config.rest_error_rate
        n = self.calls
        self.calls += 1
        if rate <= 0 or math.floor((n + 1) * rate) <= math.floor(n * rate):
            return None
        status = self.config.rest_error_codes[self.injected % len(self.config.rest_error_codes)]
        self.injected += 1
        return status, dict(_ERROR_BODIES[status])


class StreamDropper:
    """Tells one websocket connection when it has sent enough messages to be cut. The seconds fault is a
    timer of its own (`drop_after`), so that an idle connection is cut too."""

    def __init__(self, config: FaultConfig) -> None:
        self.every_messages = config.drop_ws_every_messages
        self.messages = 0

    def count(self, messages: int) -> None:
        self.messages += messages

    def should_drop(self) -> bool:
        return bool(self.every_messages and self.messages >= self.every_messages)


async def drop_after(seconds: float, drop: Callable[[], Awaitable[None]]) -> None:
    """Call `drop` once `seconds` have passed, whether or not anything was sent meanwhile."""
    await asyncio.sleep(seconds)
    await drop()

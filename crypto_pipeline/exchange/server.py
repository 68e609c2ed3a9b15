"""Starting and stopping the exchange: `run_exchange` (blocking), `ExchangeServer` (a background thread,
for tests and `make run`) and `local_exchange` (one on a free port with keys made for that run alone)."""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import TracebackType

import httpx
import uvicorn
from pydantic import SecretStr

from crypto_pipeline.exchange.app import create_app
from crypto_pipeline.exchange.clock import to_ns
from crypto_pipeline.exchange.config import ExchangeConfig
from crypto_pipeline.exchange.venue import Venue

START_TIMEOUT_S = 60.0
ADVANCE_TIMEOUT_S = 120.0


def _bind(config: ExchangeConfig) -> socket.socket:
    """Bind first, so that port 0 yields a free port we can report before serving."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # proto must say TCP: asyncio only turns Nagle off (TCP_NODELAY) for sockets that do, and with Nagle
    # on every keep-alive round trip waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    sock.set_inheritable(True)
    return sock


def _uvicorn(config: ExchangeConfig, venue: Venue) -> uvicorn.Server:
    app = create_app(config, venue)
    return uvicorn.Server(
        uvicorn.Config(app, log_level="warning", ws="websockets-sansio", lifespan="on", access_log=False)
    )


class ExchangeServer:
    """The exchange in a background thread; returns from `start()` once it answers HTTP.

    >>> with ExchangeServer(ExchangeConfig(port=0, key="k", secret="s")) as server:
    ...     TradingClient("k", "s", url_override=server.base_url)
    """

    def __init__(self, config: ExchangeConfig) -> None:
        self.config = config
        self.venue: Venue | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the exchange is not started")
        return int(self._socket.getsockname()[1])

    @property
    def base_url(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    @property
    def data_stream_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/v1beta3/crypto/us"

    @property
    def trading_stream_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/stream"

    def start(self, wait_for_replay: bool = True) -> ExchangeServer:
        self.venue = Venue(self.config)
        self._socket = _bind(self.config)
        self._server = _uvicorn(self.config, self.venue)
        self._thread = threading.Thread(target=self._serve, name="exchange-server", daemon=True)
        self._thread.start()
        self._wait_until_ready(wait_for_replay)
        return self

    def _serve(self) -> None:
        assert self._server is not None and self._socket is not None
        try:
            asyncio.run(self._server.serve(sockets=[self._socket]))
        except BaseException as error:  # reported to the starting thread
            self._error = error

    def _wait_until_ready(self, wait_for_replay: bool) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._error is not None or (self._thread is not None and not self._thread.is_alive()):
                raise RuntimeError(f"the exchange failed to start: {self._error!r}")
            try:
                health = httpx.get(self.base_url + "/healthz", timeout=1.0).json()
                if health.get("replay_ready") or not wait_for_replay:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"the exchange did not answer on {self.base_url} within {START_TIMEOUT_S:.0f} s")

    def advance_to(self, moment: datetime, timeout_s: float = ADVANCE_TIMEOUT_S) -> int:
        """Step a clock at speed 0 to `moment` (UTC), matching orders and streaming every event in between
        in order; returns once done, with the number of steps. For tests that assert which bar or quote
        something happened at: they drive the clock rather than race a running one."""
        venue = self.venue
        if venue is None or venue.loop is None:
            raise RuntimeError("the exchange is not started")
        step = asyncio.run_coroutine_threadsafe(venue.replayer.advance_to(to_ns(moment)), venue.loop)
        return step.result(timeout=timeout_s)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        if self._socket is not None:
            self._socket.close()
        self._thread = None

    def __enter__(self) -> ExchangeServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def throwaway_keys() -> tuple[SecretStr, SecretStr]:
    """A key pair made for one run: the exchange demands keys as Alpaca does, and these exist nowhere else."""
    return SecretStr(f"PK{secrets.token_hex(8).upper()}"), SecretStr(secrets.token_urlsafe(30))


def local_exchange(
    *,
    data_dir: Path,
    db_path: Path,
    start: str | datetime | None,
    speed: float,
    reset: bool = False,
    keys: tuple[SecretStr, SecretStr] | None = None,
    host: str | None = None,
) -> ExchangeServer:
    """The exchange on a free port, not started yet (`with local_exchange(...) as server:`, or `.start()`
    then `.stop()`), with `throwaway_keys()` unless `keys` are given; the clients read them from
    `server.config.key` and `server.config.secret`. Everything else comes from `Settings.exchange`."""
    key, secret = keys if keys is not None else throwaway_keys()
    chosen = {"host": host} if host is not None else {}
    return ExchangeServer(
        ExchangeConfig(
            port=0,
            key=key,
            secret=secret,
            data_dir=data_dir,
            db_path=db_path,
            start=start,
            speed=speed,
            reset=reset,
            **chosen,
        )
    )


def run_exchange(config: ExchangeConfig, announce: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted (Ctrl-C); `announce` gets the base URL once the port is bound."""
    venue = Venue(config)
    sock = _bind(config)
    if announce is not None:
        host = config.host if config.host not in ("0.0.0.0", "::") else "127.0.0.1"
        announce(f"http://{host}:{sock.getsockname()[1]}")
    try:
        _uvicorn(config, venue).run(sockets=[sock])
    finally:
        sock.close()

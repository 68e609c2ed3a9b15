"""One running exchange: the data, clock, paper desk (`broker`), store and stream hubs built from an ExchangeConfig."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from crypto_pipeline.exchange.bars import BarStore
from crypto_pipeline.exchange.book import SpreadModel
from crypto_pipeline.exchange.capture import Capture
from crypto_pipeline.exchange.clock import ReplayClock, to_ns
from crypto_pipeline.exchange.config import DEFAULT_CAPTURE_DIR, ExchangeConfig
from crypto_pipeline.exchange.desk import PaperDesk
from crypto_pipeline.exchange.faults import RestFaults
from crypto_pipeline.exchange.market import MarketData
from crypto_pipeline.exchange.matching import Match
from crypto_pipeline.exchange.records import OrderRecord
from crypto_pipeline.exchange.replay import Replayer
from crypto_pipeline.exchange.store import ExchangeStore
from crypto_pipeline.exchange.streams import Credentials, MarketDataHub, TradeUpdatesHub
from crypto_pipeline.exchange.views import trade_update_wire

CLOCK_KEY = "clock_ns"
log = logging.getLogger(__name__)


class Venue:
    def __init__(self, config: ExchangeConfig) -> None:
        if not config.credentials_set:
            raise ValueError(
                "the exchange needs API credentials: pass --key/--secret or set ALPACA_API_KEY and ALPACA_SECRET_KEY"
            )
        self.config = config
        # Data first: a bad data or capture folder fails before the account file is opened.
        bars = BarStore(config.data_dir)
        self.market = MarketData(
            bars,
            SpreadModel(config.min_spread_bps, config.spread_range_fraction, config.book_levels),
            self._capture(config, bars),
        )
        self.store = ExchangeStore(config.db_path, reset=config.reset)
        self.clock = ReplayClock(self._start_ns(bars), config.speed, stepped=config.stepped)
        self.credentials = Credentials(config.key.get_secret_value(), config.secret.get_secret_value())
        self.data_hub = MarketDataHub(self.credentials, config.faults)
        self.trade_hub = TradeUpdatesHub(self.credentials, config.faults)
        self.rest_faults = RestFaults(config.faults)
        self.broker = PaperDesk(config, self.market, self.clock, self.store, self._publish_trade_update)
        self.replayer = Replayer(self.market, self.clock, self.broker, self.data_hub)
        self.data_hub.book_snapshots = self.replayer.book_snapshots
        self._task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's, once started

    @staticmethod
    def _capture(config: ExchangeConfig, bars: BarStore) -> Capture | None:
        """The websocket capture to replay. A missing default folder (a checkout without the shared
        data) only turns it off; a folder asked for by name must exist."""
        directory = config.capture_dir
        if directory is None:
            return None
        if directory == DEFAULT_CAPTURE_DIR and "capture_dir" not in config.model_fields_set:
            if not directory.is_dir():
                log.info("no websocket capture at %s: quotes, trades and books come from bars", directory)
                return None
        return Capture(directory, bars.symbols())

    def _start_ns(self, bars: BarStore) -> int:
        if self.config.start is not None:
            return to_ns(self.config.start)
        # The clock is saved at a clean stop; a killed run saved none (or an older one), but the orders it
        # committed show how far its clock had come: resume at the later of the two, never before them.
        saved = self.store.get_meta(CLOCK_KEY)
        known = [int(saved)] if saved else []
        last_activity = self.store.last_activity_ns()
        if last_activity is not None:
            known.append(last_activity)
        return max(known) if known else bars.time_range()[0]

    def _publish_trade_update(
        self, event: str, order: OrderRecord, at_ns: int, fill: Match | None, execution_id: str | None
    ) -> None:
        position = self.broker.positions.get(order.symbol)
        update = trade_update_wire(event, order, at_ns, fill, execution_id, position.qty if position else 0.0)
        self.trade_hub.publish(update)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self.replayer.run(), name="replayer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Remember where the clock was, so a restart without --start resumes there.
        self.store.set_meta(CLOCK_KEY, str(self.clock.now_ns()))
        self.store.close()

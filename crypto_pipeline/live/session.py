"""The live loop: stream bars -> rolling buffer -> the same `MarketState` as backtests -> a decision
provider -> the same `RiskEngine` -> idempotent orders -> the journal.

One session, step by step:
1. check the keys (a refused key stops here, before any order), reconcile the session's orders (any
   status: the journal catches up with the venue after a crash, see `OrderDesk.reconcile`) and positions;
2. load `lookback_days` of base bars through REST, then follow `CryptoDataStream` bars, quotes and order
   books (`book.LiveBooks`) and `TradingStream` order updates (each client in its own thread,
   reconnecting by itself);
3. a bar that leaves a gap after the last one (a dropped connection) has the gap backfilled through
   REST at once; at a decision time, symbols that lag are backfilled before deciding;
4. at every close of the decision interval: account, states (with the live book only when
   `order_book_in_prompt`: see `_shown`), decisions, risk verdicts, orders, equity;
5. stop on max runtime, max decisions, the kill switch (which first cancels and flattens) or `stop()`.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from crypto_pipeline.errors import UserInputError
from crypto_pipeline.execution import DecisionStep, MarketView, data_age
from crypto_pipeline.journal.writer import Journal
from crypto_pipeline.live.alerts import Alerter
from crypto_pipeline.live.bars import BarBuffer, Gap, max_bars_for
from crypto_pipeline.live.book import BookView, LiveBooks
from crypto_pipeline.live.config import LiveConfig
from crypto_pipeline.live.kill import kill_reason
from crypto_pipeline.live.marks import last_closes, recent_returns
from crypto_pipeline.live.metrics import LiveMetrics
from crypto_pipeline.live.orders import OrderDesk, describe
from crypto_pipeline.live.shadow import Shadow, ShadowReport, ShadowRunner
from crypto_pipeline.live.states import states_at
from crypto_pipeline.live.streams import StreamThread, parse_stream_bar
from crypto_pipeline.live.venue import Clients
from crypto_pipeline.llm.provider import DecisionProvider
from crypto_pipeline.risk import RiskConfig, RiskEngine
from crypto_pipeline.state import MarketState
from crypto_pipeline.warehouse import Warehouse

log = logging.getLogger(__name__)


@dataclass
class SessionReport:
    session_id: str
    provider: str
    provider_note: str = ""
    model_version: str | None = None
    decision_batches: int = 0
    decisions: int = 0
    valid_decisions: int = 0
    approved: int = 0
    orders_submitted: int = 0
    orders_reused: int = 0
    orders_refused: int = 0
    stream_bars: int = 0
    stream_quotes: int = 0
    book_messages: int = 0
    books_resubscribed: int = 0
    malformed_messages: int = 0
    gaps_backfilled: int = 0
    bars_backfilled: int = 0
    reconciled_open_orders: int = 0
    reconciled_positions: int = 0
    flattened_positions: int = 0
    decision_times_skipped: int = 0
    stop_reason: str = ""
    equity_start: float | None = None
    equity_end: float | None = None
    decision_to_order_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    shadows: list[ShadowReport] = field(default_factory=list)

    def summary(self) -> str:
        lat = np.percentile(self.decision_to_order_ms, [50, 99]) if self.decision_to_order_ms else None
        latency = f", decision->order p50 {lat[0]:.1f} ms p99 {lat[1]:.1f} ms" if lat is not None else ""
        return (
            f"live session {self.session_id} ({self.provider_note}): {self.decision_batches} decision time(s), "
            f"{self.decisions} decisions ({self.valid_decisions} valid), {self.orders_submitted} orders "
            f"(+{self.orders_reused} already at the venue, {self.orders_refused} refused), "
            f"{self.stream_bars} stream bars, {self.stream_quotes} quotes, {self.book_messages} book "
            f"messages, {self.gaps_backfilled} gaps backfilled, "
            f"{self.malformed_messages} malformed messages skipped{latency}; stopped: {self.stop_reason}"
            + "".join(f"\n  {shadow.summary()}" for shadow in self.shadows)
        )


class LiveSession:
    """One bounded live session; `run()` blocks until it stops and returns its report."""

    def __init__(
        self,
        config: LiveConfig,
        clients: Clients,
        provider: DecisionProvider,
        warehouse: Warehouse,
        *,
        kill_flag: Any = None,
        risk: RiskEngine | None = None,
        provider_note: str = "",
        metrics: LiveMetrics | None = None,
        alerts: Alerter | None = None,
        model_version: str | None = None,
        shadows: Sequence[Shadow] = (),
    ) -> None:
        self.config = config
        # Other versions on the same stream and states, against shadow books (shadow.py).
        self.shadows = ShadowRunner(shadows)
        self.clients = clients
        self.provider = provider
        self.risk = risk or RiskEngine(RiskConfig(max_spread_bps=config.max_spread_bps))
        self.journal = Journal(warehouse, config.session_id)
        # Monitoring follows the journal (see metrics.py, alerts.py); the caller may serve or post them.
        self.metrics = metrics or LiveMetrics(config.session_id)
        self.alerts = alerts or Alerter(config.session_id)
        self.journal.listeners += [self.metrics.on_journal, self.alerts.on_journal]
        self._streams: list[StreamThread] = []
        self.desk = OrderDesk(
            clients.trading, self.journal, config.session_id, attempts=config.submit_attempts
        )
        # The backtest's decision step, with the live order desk as its venue.
        self.step = DecisionStep(provider, self.risk, self.desk, self.journal, session_id=config.session_id)
        self.buffer = BarBuffer(config.symbols, config.base, max_bars_for(config.base, config.lookback_days))
        self._gaps: list[Gap] = []  # revealed by stream bars, backfilled when the queue is drained
        # Kept by the data stream's thread (see book.py); read here at each decision time.
        self.books = LiveBooks(config.symbols)
        self._data_stream: Any = None
        self.kill_flag = kill_flag
        self.report = SessionReport(
            config.session_id, getattr(provider, "name", "provider"), provider_note, model_version
        )
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        self._stop_reason = ""
        self._last_bar_wall = time.monotonic()
        self._decided_wall = 0.0
        self._stale_logged = False
        self._last_clock_poll = 0.0
        # Polled on every turn; a reason ends the session cleanly (e.g. the champion alias moved).
        self.stop_when: Callable[[], str | None] | None = None

    # --- control ------------------------------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        self._stop_reason = self._stop_reason or reason
        self._stop.set()

    def run(self) -> SessionReport:
        started = time.monotonic()
        cfg = self.config
        account = self.desk.call("account", self.clients.check_keys)  # wrong keys end here, before any order
        self.report.equity_start = float(account["equity"])
        now = self._venue_time()
        opened, held = self.desk.reconcile(now)
        self.report.reconciled_open_orders, self.report.reconciled_positions = opened, held
        self._journal_sessions(now)
        self._load_history(now)
        next_at = self._first_decision_time()
        streams = self._streams = self._start_streams()
        self.subscribed.set()
        waiting_since: float | None = None
        try:
            while not self._stop.is_set():
                if self._check_kill():
                    break
                reason = self.stop_when() if self.stop_when is not None else None
                if reason:
                    self.stop(reason)
                    break
                if time.monotonic() - started >= cfg.max_runtime_s:
                    self.stop(f"max runtime {cfg.max_runtime_s:g} s")
                    break
                self._drain(timeout=0.05)
                reached = [s for s in cfg.symbols if (self.buffer.last_close(s) or next_at) >= next_at]
                if reached and waiting_since is None:
                    waiting_since = time.monotonic()
                all_in = len(reached) == len(cfg.symbols) and all(
                    self.buffer.last_close(s) for s in cfg.symbols
                )
                grace_over = waiting_since is not None and time.monotonic() - waiting_since >= cfg.grace_s
                if all_in or (reached and grace_over) or self._clock_passed(next_at):
                    self._decide(next_at)
                    waiting_since = None
                    next_at = self._next_decision_time(next_at)
                    if cfg.max_decisions is not None and self.report.decision_batches >= cfg.max_decisions:
                        self.stop(f"max decisions {cfg.max_decisions}")
                self._watch_staleness()
        finally:
            for stream in streams:
                stream.stop()
            self._drain(timeout=0)
            self._finish()
        self.report.wall_s = time.monotonic() - started
        log.info(self.report.summary())
        return self.report

    # --- start ----------------------------------------------------------------------------------------
    def _venue_time(self) -> datetime:
        clock = self.desk.call("clock", self.clients.trading.get_clock)
        stamp = clock["timestamp"] if isinstance(clock, dict) else clock.timestamp
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).astimezone(UTC)

    def _load_history(self, now: datetime) -> None:
        cfg = self.config
        start = self.buffer.floor(now) - timedelta(days=cfg.lookback_days)
        bars = self.clients.data.fetch_bars(list(cfg.symbols), cfg.base, start, self.buffer.floor(now))
        self.buffer.insert(bars)
        empty = [s for s in cfg.symbols if not self.buffer.count(s)]
        if empty:
            raise UserInputError(
                f"the venue has no {cfg.base.value} bars for {empty} in the {cfg.lookback_days} days before "
                f"{now:%Y-%m-%d %H:%M}; choose symbols it trades at that timeframe"
            )
        log.info("loaded %d %s bars of %d symbol(s)", bars.height, cfg.base.value, len(cfg.symbols))

    def _first_decision_time(self) -> datetime:
        # The latest interval boundary the history has reached: a session decides as soon as it can.
        newest = max(self.buffer.last_close(s) for s in self.config.symbols)  # type: ignore[type-var]
        step = int(self.config.interval.duration.total_seconds())
        epoch = int(newest.timestamp())
        return datetime.fromtimestamp(epoch - epoch % step, tz=UTC)

    def _next_decision_time(self, done: datetime) -> datetime:
        """The close after `done`; or, when the stream has run past it while deciding (a slow model at a
        fast replay), the latest close the stream has reached: deciding on the missed ones would decide
        on stale data and fall further behind."""
        following = done + self.config.interval.duration
        self._drain(timeout=0)  # the bars that came while deciding
        closes = [c for s in self.config.symbols if (c := self.buffer.last_close(s)) is not None]
        if not closes:
            return following
        step = int(self.config.interval.duration.total_seconds())
        epoch = int(max(closes).timestamp())
        latest = datetime.fromtimestamp(epoch - epoch % step, tz=UTC)
        if latest <= following:
            return following
        skipped = (latest - following) // self.config.interval.duration
        self.report.decision_times_skipped += skipped
        log.info("behind the venue clock: %d decision time(s) skipped, next at %s", skipped, latest)
        return latest

    def _start_streams(self) -> list[StreamThread]:
        data = self._data_stream = self.clients.data_stream()
        data.subscribe_bars(self._on_bar, *self.config.symbols)
        data.subscribe_quotes(self._on_quote, *self.config.symbols)
        data.subscribe_orderbooks(self._on_book, *self.config.symbols)
        trades = self.clients.trading_stream()
        trades.subscribe_trade_updates(self._on_trade_update)
        return [
            StreamThread(data, "live-data-stream").start(),
            StreamThread(trades, "live-trade-stream").start(),
        ]

    # --- stream handlers (run in the streams' threads: they only queue) --------------------------------
    async def _on_bar(self, message: dict[str, Any]) -> None:
        try:
            symbol, bar = parse_stream_bar(message)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with one message, skip it and say so
            self.events.put(("malformed", f"{type(exc).__name__}: {exc}"[:200]))
            return
        self.events.put(("bar", (symbol, bar)))

    # Quotes and books go straight into `self.books` (under its lock), not through the queue: they come
    # far more often than bars, and the main thread reads only their latest state.
    async def _on_quote(self, message: dict[str, Any]) -> None:
        try:
            self.books.on_quote(message)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with one message, skip it and say so
            self.events.put(("malformed", f"{type(exc).__name__}: {exc}"[:200]))

    async def _on_book(self, message: dict[str, Any]) -> None:
        try:
            self.books.on_book(message)
        except Exception as exc:  # noqa: BLE001 - as for quotes
            self.events.put(("malformed", f"{type(exc).__name__}: {exc}"[:200]))
            lost = getattr(exc, "lost", None)
            if lost:
                self.events.put(("book_lost", lost))

    async def _on_trade_update(self, message: dict[str, Any]) -> None:
        order = (message.get("data") or {}).get("order") if isinstance(message, dict) else None
        if isinstance(order, dict):
            self.events.put(("order", order))

    # --- the main thread ------------------------------------------------------------------------------
    def _drain(self, timeout: float) -> None:
        try:
            kind, payload = self.events.get(timeout=timeout) if timeout else self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(kind, payload)
            try:
                kind, payload = self.events.get_nowait()
            except queue.Empty:
                break
        # The gaps the drained bars revealed, fetched together: after a reconnect each symbol's first
        # bar reveals its own gap, and fetching each as it came was one request per symbol.
        gaps, self._gaps = self._gaps, []
        self._backfill(gaps)

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "bar":
            symbol, bar = payload
            self.report.stream_bars += 1
            self._last_bar_wall = time.monotonic()
            self._stale_logged = False
            gap = self.buffer.add_stream_bar(symbol, bar)
            if gap is not None:
                self._gaps.append(gap)  # fetched at the end of this drain (`_drain`)
        elif kind == "order":
            self.desk.observe(payload)
        elif kind == "malformed":
            self.report.malformed_messages += 1
            log.warning("malformed market data message skipped: %s", payload)
        elif kind == "book_lost":
            self._resubscribe_book(payload)

    def _resubscribe_book(self, symbol: str) -> None:
        """A skipped book update left `symbol`'s book unknown: subscribing it again brings a full book
        (as on a reconnect). Called here, not in the stream's thread: alpaca-py's (un)subscribe waits on
        that thread's event loop."""
        stream = self._data_stream
        if stream is None or self._stop.is_set():  # a stopping stream's loop may never run the call
            return
        try:
            stream.unsubscribe_orderbooks(symbol)
            stream.subscribe_orderbooks(self._on_book, symbol)
        except Exception as exc:  # noqa: BLE001 - a reconnect subscribes again anyway
            log.warning("resubscribing the %s order book failed: %s", symbol, describe(exc))
            return
        self.report.books_resubscribed += 1
        log.info("order book of %s unknown after a skipped update: subscribed again for a full book", symbol)

    def _backfill(self, gaps: list[Gap]) -> None:
        """Fetch the bars of `gaps` through REST in one request for every symbol that misses any: the
        span from the earliest start to the latest end, of which each symbol keeps only the bars it
        missed (a reconnect leaves every symbol a gap, their starts apart by the bars each got before
        the drop: grouped by span, that was one request per symbol, 131 at 131 pairs)."""
        if not gaps:
            return
        symbols = sorted({g.symbol for g in gaps})
        start, end = min(g.start for g in gaps), max(g.end for g in gaps)
        try:
            bars = self.clients.data.fetch_bars(symbols, self.config.base, start, end)
        except Exception as exc:  # noqa: BLE001 - the next decision's catch-up tries again
            log.warning("backfill of %s %s..%s failed: %s", ",".join(symbols), start, end, describe(exc))
            return
        stamp = bars.schema["timestamp"]
        missed = pl.DataFrame(
            {
                "symbol": [g.symbol for g in gaps],
                "_from": pl.Series([g.start for g in gaps], dtype=stamp),
                "_to": pl.Series([g.end for g in gaps], dtype=stamp),
            }
        )
        kept = (
            bars.join(missed, on="symbol")
            .filter((pl.col("timestamp") >= pl.col("_from")) & (pl.col("timestamp") < pl.col("_to")))
            .select(bars.columns)
            .unique(["symbol", "timestamp"], keep="first", maintain_order=True)
        )
        added = self.buffer.insert(kept)
        self.buffer.resolved(gaps)
        self.report.gaps_backfilled += len(gaps)
        self.report.bars_backfilled += added
        log.info(
            "backfilled %d bar(s) of %s %s..%s in one request",
            added,
            ",".join(symbols),
            f"{start:%H:%M}",
            f"{end:%H:%M}",
        )

    def _clock_passed(self, at: datetime) -> bool:
        """When no bar came for `grace_s`, ask the venue's clock whether `at` has passed: the bars that
        would have said so may be the ones a dropped connection lost (they are backfilled then)."""
        now = time.monotonic()
        if (
            # idle since the last bar or the end of the last decision time (no bar is read meanwhile)
            now - max(self._last_bar_wall, self._decided_wall) < self.config.grace_s
            or now - self._last_clock_poll < self.config.grace_s
        ):
            return False
        self._last_clock_poll = now
        try:
            return self._venue_time() >= at
        except Exception as exc:  # noqa: BLE001 - asked again after the next grace period
            log.warning("venue clock unavailable: %s", describe(exc))
            return False

    def _watch_staleness(self) -> None:
        idle = time.monotonic() - self._last_bar_wall
        connections = {s.thread.name: s.connections for s in self._streams}
        self.metrics.on_stream(data_age_s=idle, connections=connections, bars=self.report.stream_bars)
        if idle >= self.config.stale_after_s and not self._stale_logged:
            self._stale_logged = True
            self.alerts.stale_data(idle)

    def _check_kill(self) -> bool:
        if self.kill_flag is None:
            return False
        reason = kill_reason(self.kill_flag)
        if reason is None:
            return False
        now = self._venue_time()
        self.report.flattened_positions = self.desk.flatten(now)
        self.alerts.kill_switch(reason, self.report.flattened_positions)
        self.stop(f"kill switch: {reason}")
        return True

    # --- one decision time ------------------------------------------------------------------------------
    def _decide(self, at: datetime) -> None:
        cfg = self.config
        # Catch up first: lagging symbols and periods built from finer stream bars come from REST.
        lagging = [g for s in cfg.symbols if (g := self.buffer.missing_until(s, at)) is not None]
        self._backfill(lagging + self.buffer.suspect_until(at))
        now = self._venue_time()
        frame = self.buffer.frame(closed_by=at)
        marks = last_closes(frame)
        states, missing = states_at(frame, cfg.base, cfg.symbols, at)
        books, fresh = self._books_at(now)
        shown = [self._shown(states[s], fresh.get(s)) for s in cfg.symbols if s in states]
        newest = dict(frame.group_by("symbol").agg(pl.col("timestamp").max()).iter_rows())
        ages = {s: data_age(now, newest.get(s), cfg.base) for s in cfg.symbols}
        for state in shown:
            book = fresh.get(state.symbol)
            if book is not None and state.order_book is not None:
                ages[state.symbol] = max(ages[state.symbol], book.age(now))  # the prompt read the book
        market = MarketView(
            marks=marks,
            returns=recent_returns(frame, self.risk.config.correlation_window),
            data_age=ages,
            # The spread rule sees the live book whether or not the prompt does; NaN: unknown or stale.
            spread_bps={s: fresh[s].snapshot.spread_bps if s in fresh else math.nan for s in cfg.symbols},
            order_books={s: view.journal_json() for s, view in books.items()},
        )
        gated = self.step(at, shown, market, missing=missing)
        self.report.decision_to_order_ms += [g.order_ms for g in gated if g.order is not None and g.order_ms]
        self.alerts.risk_state(self.risk.daily_breaker, self.risk.killed, self.risk.kill_reason)
        self.report.decisions += len(gated)
        self.report.valid_decisions += sum(g.decision.valid for g in gated)
        self.report.approved += sum(g.result.approved for g in gated)
        self.desk.poll_open()
        self._snapshot(at)
        self.journal.flush()
        # The shadows decide on the same states once this session's orders are out, in their thread.
        self.shadows.submit(at, shown, market, frame)
        self._decided_wall = time.monotonic()
        self.report.decision_batches += 1
        self.report.orders_submitted = self.desk.submitted
        self.report.orders_reused = self.desk.reused
        self.report.orders_refused = len(self.desk.refused)

    def _books_at(self, now: datetime) -> tuple[dict[str, BookView], dict[str, BookView]]:
        """Every symbol's live book (journaled as seen) and those fresh enough to use: no older than the
        risk engine's `max_data_age` at the venue clock, the limit the bars are held to."""
        books = {s: v for s in self.config.symbols if (v := self.books.view(s)) is not None}
        fresh = {s: v for s, v in books.items() if v.age(now) <= self.risk.config.max_data_age}
        self.metrics.on_books({s: v.snapshot.spread_bps for s, v in fresh.items()})
        self._count_books()
        return books, fresh

    def _shown(self, state: MarketState, book: BookView | None) -> MarketState:
        """The state the prompt renders. The book joins it only with `order_book_in_prompt`: the models
        were trained and are judged on states of historical bars, which have no book, so by default the
        live prompt stays byte for byte the backtest's (see LiveConfig.order_book_in_prompt)."""
        if self.config.order_book_in_prompt and book is not None:
            return state.with_order_book(book.snapshot)
        return state

    def _count_books(self) -> None:
        counts = self.books.counts
        self.report.stream_quotes = counts.quotes
        self.report.book_messages = counts.book_resets + counts.book_updates + counts.updates_ignored

    def _snapshot(self, at: datetime) -> None:
        raw = self.desk.call("account", self.clients.trading.get_account)
        value, unrealized = self.desk.positions_value()
        equity = float(raw["equity"])
        self.report.equity_end = equity
        self.journal.equity(
            at, equity=equity, cash=float(raw["cash"]), positions_value=value, unrealized=unrealized
        )

    def _journal_sessions(self, now: datetime) -> None:
        """The `sessions` rows: what trades and why (every fallback in the note), and each shadow."""
        cfg = self.config
        common = {"venue": cfg.venue, "symbols": list(cfg.symbols)}
        self.journal.session(
            now,
            provider=self.report.provider,
            model_version=self.report.model_version,
            note=self.report.provider_note,
            **common,
        )
        for shadow in self.shadows.shadows:
            shadow.journal.session(
                now,
                provider=shadow.report.note,
                model_version=shadow.report.version,
                note=f"shadow of {cfg.session_id}: decides on the same states, no order is sent",
                role="shadow",
                trading_run_id=cfg.session_id,
                **common,
            )
            shadow.journal.flush()
        self.journal.flush()

    def _finish(self) -> None:
        try:
            self.desk.poll_open()
            self._snapshot(self._venue_time())
        except Exception as exc:  # noqa: BLE001 - the journal is still written below
            log.warning("final account snapshot failed: %s", describe(exc))
        self.journal.flush()
        self.report.shadows = self.shadows.close(self.buffer.frame())
        self.report.orders_submitted = self.desk.submitted
        self.report.orders_reused = self.desk.reused
        self.report.orders_refused = len(self.desk.refused)
        self._count_books()
        self.report.stop_reason = self._stop_reason or "stopped"

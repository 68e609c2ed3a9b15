"""Shadow books: other model versions deciding beside a live session, on the same stream and the same
market states, through the same decision step and risk engine, against a simulated venue of their own
(`execution.SimulatedVenue`: next-bar fills with the backtest's fees and slippage). No order of theirs
reaches the venue; everything they do is journaled under their own run id
(`<session>-shadow-v<version>`), with the version in every decision row.

This is the forward, out-of-sample record of a challenger that paper trading exists to collect. A
shadow runs in a worker thread after the session's own decisions have gone out: a slow or failing
shadow never delays the trading model's orders. A shadow still busy at the next decision time skips it
(counted), rather than queueing behind the market."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import polars as pl

from crypto_pipeline.execution import DecisionStep, MarketView, SimulatedVenue
from crypto_pipeline.journal.writer import Journal
from crypto_pipeline.llm.provider import DecisionProvider
from crypto_pipeline.risk import RiskConfig, RiskEngine
from crypto_pipeline.state import MarketState
from crypto_pipeline.trading import rules
from crypto_pipeline.warehouse import Warehouse

log = logging.getLogger(__name__)


def shadow_run_id(session_id: str, version: str) -> str:
    return f"{session_id}-shadow-v{version}"


@dataclass
class ShadowReport:
    run_id: str
    version: str
    note: str
    decision_times: int = 0
    decisions: int = 0
    approved: int = 0
    fills: int = 0
    skipped: int = 0  # decision times it was still busy with the previous one
    failed: int = 0  # decision times it raised on (journaled nothing)
    equity_start: float | None = None
    equity_end: float | None = None

    def summary(self) -> str:
        ret = (
            f", equity {self.equity_start:,.2f} -> {self.equity_end:,.2f}"
            if self.equity_start and self.equity_end is not None
            else ""
        )
        return (
            f"shadow {self.run_id} ({self.note}): {self.decision_times} decision time(s), {self.decisions} "
            f"decisions, {self.approved} approved, {self.fills} shadow fills (no order sent){ret}; "
            f"{self.skipped} skipped while busy, {self.failed} failed"
        )


class Shadow:
    """One version in shadow: its provider, its own risk engine and simulated venue, its own journal."""

    def __init__(
        self,
        provider: DecisionProvider,
        version: str,
        note: str,
        session_id: str,
        warehouse: Warehouse,
        *,
        init_cash: float,
        risk: RiskConfig | None = None,
        fee_bps: float = rules.FeeSchedule().taker_bps,
    ) -> None:
        self.run_id = shadow_run_id(session_id, version)
        self.journal = Journal(warehouse, self.run_id)
        self.venue = SimulatedVenue(
            pd.DataFrame(), pd.DataFrame(), init_cash=init_cash, fee_bps=fee_bps, journal=self.journal
        )
        self.step = DecisionStep(
            provider, RiskEngine(risk or RiskConfig()), self.venue, self.journal, session_id=self.run_id
        )
        self.report = ShadowReport(self.run_id, version, note, equity_start=init_cash)
        self._last_at: datetime | None = None

    def decide(
        self, at: datetime, states: Sequence[MarketState], market: MarketView, bars: pl.DataFrame
    ) -> None:
        """The orders of the previous decision time fill at the open of the bar that started then (the
        stream has brought it by now), then this decision time runs through the step."""
        self.venue.update_bars(bars)
        self._fill_previous()
        self.venue.mark(dict(market.marks))
        gated = self.step(at, states, market)
        self._last_at = at
        account = self.venue.account()
        self.journal.equity(
            at,
            equity=account.equity,
            cash=account.cash,
            positions_value=account.equity - account.cash,
            unrealized=None,
        )
        self.journal.flush()
        self.report.decision_times += 1
        self.report.decisions += len(gated)
        self.report.approved += sum(g.result.approved for g in gated)
        self.report.fills = len(self.venue.fills)
        self.report.equity_end = account.equity

    def finish(self, bars: pl.DataFrame) -> None:
        """Fill what the last decision time sent when its bar has come; journal the final equity."""
        self.venue.update_bars(bars)
        if self._last_at is not None and pd.Timestamp(self._last_at) in self.venue.opens.index:
            self._fill_previous()
        self.journal.flush()
        self.report.fills = len(self.venue.fills)

    def _fill_previous(self) -> None:
        if self._last_at is None:
            return
        stamp = pd.Timestamp(self._last_at)
        self.venue.fill_pending(stamp if stamp in self.venue.opens.index else None)
        self._last_at = None


class ShadowRunner:
    """Runs the shadows of a session in one worker thread, one decision time at a time."""

    def __init__(self, shadows: Sequence[Shadow]) -> None:
        self.shadows = list(shadows)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow") if shadows else None
        self._busy: Future | None = None
        self._lock = threading.Lock()

    def submit(
        self, at: datetime, states: Sequence[MarketState], market: MarketView, bars: pl.DataFrame
    ) -> None:
        """Hand a decision time to the shadows and return at once."""
        if self._pool is None:
            return
        with self._lock:
            if self._busy is not None and not self._busy.done():
                for shadow in self.shadows:
                    shadow.report.skipped += 1
                return
            self._busy = self._pool.submit(self._run, at, list(states), market, bars)

    def _run(self, at: datetime, states: list[MarketState], market: MarketView, bars: pl.DataFrame) -> None:
        for shadow in self.shadows:
            try:
                shadow.decide(at, states, market, bars)
            except Exception:  # noqa: BLE001 - a shadow never stops the session
                shadow.report.failed += 1
                log.exception("shadow %s failed at %s", shadow.run_id, at)

    def close(self, bars: pl.DataFrame, timeout: float = 60.0) -> list[ShadowReport]:
        """Wait (at most `timeout`) for the decision time in progress, then finish every shadow."""
        if self._pool is None:
            return []
        busy = self._busy
        if busy is not None:
            try:
                busy.result(timeout=timeout)
            except Exception:  # noqa: BLE001 - reported in the shadow's own counters
                log.warning("shadows still busy after %.0f s at the end of the session", timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for shadow in self.shadows:
            try:
                shadow.finish(bars)
            except Exception:  # noqa: BLE001
                log.exception("shadow %s could not finish", shadow.run_id)
        return [s.report for s in self.shadows]

"""The simulated venue of backtests and shadow books: an order sent at the close of bar t fills at the
open of bar t+1 (or later, for the one-bar-lag audit), paying the local exchange's taker fee and its
impact model (`trading.rules.SlippageModel`) or a flat slippage, never outside that bar's high and low
(`rules.within_bar`, given the highs and lows); a symbol without a bar then does not trade (the order
expires); spot only, long or flat.

It journals what the live order desk journals: the venue's answer when an order is sent
("submitted"), its fill ("filled") and the fill itself, under the same client ids."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from crypto_pipeline.journal.writer import Journal
from crypto_pipeline.trading import Account, Fill, OrderIntent, OrderSide, Position, rules
from crypto_pipeline.trading.enums import Liquidity

log = logging.getLogger(__name__)


def wide(bars: pl.DataFrame, column: str) -> pd.DataFrame:
    """One column of long bars as a time x symbol frame (the shape vectorbt and this venue read)."""
    frame = bars.select("timestamp", "symbol", column).pivot(on="symbol", index="timestamp", values=column)
    frame = frame.sort("timestamp").to_pandas().set_index("timestamp")
    frame.index = pd.DatetimeIndex(frame.index).tz_convert("UTC")
    frame.columns.name = "symbol"
    return frame


@dataclass
class Ledger:
    """Cash and long positions, marked to the latest close."""

    cash: float
    qty: dict[str, float] = field(default_factory=dict)
    entry: dict[str, float] = field(default_factory=dict)

    def account(self, marks: dict[str, float]) -> Account:
        positions = tuple(
            Position(symbol=s, qty=q, avg_entry_price=self.entry[s]) for s, q in self.qty.items() if q > 0
        )
        equity = self.cash + sum(q * marks.get(s, self.entry[s]) for s, q in self.qty.items())
        return Account(cash=self.cash, equity=equity, positions=positions)

    def fill(self, side: OrderSide, symbol: str, qty: float, price: float, fee: float) -> None:
        held = self.qty.get(symbol, 0.0)
        if side == OrderSide.BUY:
            self.entry[symbol] = (held * self.entry.get(symbol, 0.0) + qty * price) / (held + qty)
            self.qty[symbol] = rules.add_qty(held, qty)
            self.cash -= qty * price + fee
        else:
            self.qty[symbol] = rules.add_qty(held, -qty)
            self.cash += qty * price - fee
            if self.qty[symbol] <= 0:
                del self.qty[symbol], self.entry[symbol]

    def copy(self) -> Ledger:
        return Ledger(self.cash, dict(self.qty), dict(self.entry))


@dataclass
class _Pending:
    intent: OrderIntent
    cid: str
    at: datetime


class SimulatedVenue:
    """A `Venue` over wide (time x symbol) opens and volumes, keyed by bar open time.

    The owner marks it at each decision time (`mark`), sends orders through the decision step, then
    calls `fill_pending(bar)` with the bar the orders fill at. Until then, `account()` counts each sent
    order as filled at its mark, so that later decisions of the same batch see its effect (exposure
    caps then hold across symbols decided at the same time), as the live desk's account does."""

    def __init__(
        self,
        opens: pd.DataFrame,
        volumes: pd.DataFrame,
        *,
        init_cash: float,
        fee_bps: float,
        slippage_bps: float | None = None,
        journal: Journal | None = None,
        highs: pd.DataFrame | None = None,
        lows: pd.DataFrame | None = None,
    ) -> None:
        self.opens, self.volumes = opens, volumes
        self.highs, self.lows = highs, lows  # with them, fills stay inside the bar (`rules.within_bar`)
        self.fee_bps, self.slippage_bps = fee_bps, slippage_bps
        self.slippage_model = rules.SlippageModel()
        self.ledger = Ledger(cash=init_cash)
        self.journal = journal
        self.fills: list[Fill] = []
        self.decided_at: dict[str, datetime] = {}  # client id -> the decision time it answers
        self._pending: list[_Pending] = []
        self._marks: dict[str, float] = {}
        self.decided: dict[tuple[datetime, str], str | None] = {}  # a backtest never restarts

    @classmethod
    def from_bars(cls, bars: pl.DataFrame, **options: Any) -> SimulatedVenue:
        venue = cls(pd.DataFrame(), pd.DataFrame(), **options)
        venue.update_bars(bars)
        return venue

    def update_bars(self, bars: pl.DataFrame) -> None:
        """The bars orders fill against (a live shadow book refreshes them as the stream brings bars)."""
        if bars.is_empty():
            return
        self.opens, self.volumes = wide(bars, "open"), wide(bars, "volume")

    # --- the Venue protocol ---------------------------------------------------------------------------
    def mark(self, marks: dict[str, float]) -> None:
        self._marks = dict(marks)

    def account(self) -> Account:
        if not self._pending:
            return self.ledger.account(self._marks)
        projected = self.ledger.copy()
        for p in self._pending:
            price = self._marks.get(p.intent.symbol)
            qty = p.intent.qty or 0.0
            if price is None or qty <= 0:
                continue
            if p.intent.side == OrderSide.SELL:
                qty = min(qty, projected.qty.get(p.intent.symbol, 0.0))
                if qty <= 0:
                    continue
            projected.fill(p.intent.side, p.intent.symbol, qty, price, qty * price * self.fee_bps / 10_000)
        return projected.account(self._marks)

    def submit(self, intent: OrderIntent, cid: str, at: datetime) -> dict[str, Any] | None:
        self._pending.append(_Pending(intent, cid, at))
        self.decided_at[cid] = at
        order = self._order(intent, cid, status="accepted")
        if self.journal is not None:
            self.journal.order_event(at, order, status="submitted")
        return order

    def resume(self, cid: str, at: datetime) -> dict[str, Any] | None:
        return None

    # --- the next bar -------------------------------------------------------------------------------
    def fill_pending(self, bar: pd.Timestamp | None) -> None:
        """Fill every sent order at the open of `bar` (sells first, so that a rotation frees cash
        before buying); None: there is no next bar, the orders expire unfilled."""
        pending, self._pending = self._pending, []
        for p in sorted(pending, key=lambda p: p.intent.side != OrderSide.SELL):
            fill = self._execute(p, bar) if bar is not None else None
            if self.journal is None:
                continue
            if fill is None:
                self.journal.order_event(p.at, self._order(p.intent, p.cid, status="expired"))
                continue
            order = self._order(p.intent, p.cid, status="filled", filled=fill)
            self.journal.order_event(fill.at, order)
            self.journal.fill(fill.at, order, f"{p.cid}:fill", fill.qty, fill.price, fee=fill.fee)

    def _execute(self, p: _Pending, bar: pd.Timestamp) -> Fill | None:
        """Fill at the open of `bar`, or drop the order (no bar for the symbol, no cash, nothing held)."""
        intent, symbol = p.intent, p.intent.symbol
        opens = self.opens
        known = symbol in opens.columns and bar in opens.index
        open_price = float(opens.at[bar, symbol]) if known else math.nan
        if not np.isfinite(open_price) or open_price <= 0:
            log.info("no open for %s at %s: order dropped", symbol, bar)
            return None
        qty = intent.qty or 0.0
        if intent.side == OrderSide.SELL:
            qty = min(qty, self.ledger.qty.get(symbol, 0.0))
        raw_volume = self.volumes.at[bar, symbol]
        volume = float(raw_volume) if np.isfinite(raw_volume) else 0.0
        move = (
            self.slippage_model.impact(qty, volume)
            if self.slippage_bps is None
            else self.slippage_bps / 10_000
        )
        buy = intent.side == OrderSide.BUY
        price = float(open_price * (1 + move) if buy else open_price * (1 - move))
        price = rules.within_bar(
            price, self._bound(self.lows, bar, symbol), self._bound(self.highs, bar, symbol)
        )
        if buy:
            # The open may gap above the decision's price: shrink the order to the cash there is.
            qty = min(qty, rules.floor_qty(self.ledger.cash / (price * (1 + self.fee_bps / 10_000))))
        qty = rules.floor_qty(qty)
        if qty <= 0:
            return None
        fee = qty * price * self.fee_bps / 10_000
        self.ledger.fill(intent.side, symbol, qty, price, fee)
        fill = Fill(
            execution_id=f"{p.cid}:fill",
            order_id=p.cid,
            symbol=symbol,
            side=intent.side,
            qty=qty,
            price=price,
            fee=fee,
            liquidity=Liquidity.TAKER,
            at=bar.to_pydatetime(),
        )
        self.fills.append(fill)
        return fill

    @staticmethod
    def _bound(frame: pd.DataFrame | None, bar: pd.Timestamp, symbol: str) -> float | None:
        if frame is None or symbol not in frame.columns or bar not in frame.index:
            return None
        return float(frame.at[bar, symbol])

    @staticmethod
    def _order(intent: OrderIntent, cid: str, *, status: str, filled: Fill | None = None) -> dict[str, Any]:
        """The order as the journal (and the live desk's venue) describe one: its client id is its id."""
        return {
            "id": cid,
            "client_order_id": cid,
            "symbol": intent.symbol,
            "side": intent.side.value,
            "type": intent.type.value,
            "time_in_force": intent.time_in_force.value,
            "qty": filled.qty if filled is not None else intent.qty,
            "notional": intent.notional,
            "status": status,
            "filled_qty": filled.qty if filled is not None else 0.0,
            "filled_avg_price": filled.price if filled is not None else None,
        }

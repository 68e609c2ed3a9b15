"""The deterministic risk engine: the one gate between a decision and an order, shared by backtests and
live trading. No model can override it: it sizes orders itself (from `position_size_pct` and confidence,
for BUY and SELL only) and turns every decision into either an `OrderIntent` or a rejection with a reason.

It sees decisions, account state, prices and order intents only (no LLM, no exchange). It keeps the
little state its rules need: when each symbol last traded, the orders of the last hour, the equity at
the start of the UTC day and its peak, and whether a breaker has tripped.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from crypto_pipeline.llm.decision import Action, TradeDecision
from crypto_pipeline.timeutil import as_utc
from crypto_pipeline.trading import Account, OrderIntent, OrderSide, OrderType, rules


class RiskConfig(BaseModel):
    """Every rule of the risk engine, with safe defaults. Percentages are of account equity."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_symbol_exposure_pct: float = Field(25.0, gt=0, le=100)
    max_total_exposure_pct: float = Field(80.0, gt=0, le=100)
    min_order_notional: float = Field(rules.MIN_NOTIONAL * 10, ge=rules.MIN_NOTIONAL)
    max_order_notional: float = Field(50_000.0, gt=0)
    min_confidence: float = Field(55.0, ge=0, le=100)
    cooldown: timedelta = timedelta(hours=1)
    max_orders_per_hour: int = Field(10, ge=1)
    max_open_positions: int = Field(5, ge=1)
    # Symbols whose recent returns correlate above this count as one bet for `max_total_exposure_pct`
    # of a single symbol: their combined exposure may not exceed `max_correlated_exposure_pct`.
    correlation_threshold: float = Field(0.8, gt=0, le=1)
    correlation_window: int = Field(48, ge=3, description="Returns used for the rolling correlation.")
    max_correlated_exposure_pct: float = Field(40.0, gt=0, le=100)
    max_data_age: timedelta = timedelta(minutes=90)
    # Opening (BUY) is refused when the live order book's spread is wider than this; None: no such rule.
    # Only the live loop knows a book: backtests pass no spread, so the rule cannot apply there.
    max_spread_bps: float | None = Field(None, gt=0)
    daily_loss_limit_pct: float = Field(5.0, gt=0, le=100)
    max_drawdown_pct: float = Field(20.0, gt=0, le=100)
    order_type: OrderType = OrderType.MARKET


@dataclass(frozen=True)
class RiskResult:
    """An order intent, or a rejection with its reason (a HOLD is a rejection: 'hold')."""

    intent: OrderIntent | None = None
    reason: str | None = None

    @property
    def approved(self) -> bool:
        return self.intent is not None


@dataclass
class RiskEngine:
    """Apply `RiskConfig` to decisions; call `update` with the account before each batch of decisions."""

    config: RiskConfig = field(default_factory=RiskConfig)
    _last_trade: dict[str, datetime] = field(default_factory=dict)
    _orders: deque[datetime] = field(default_factory=deque)
    _day: date | None = None
    _day_start_equity: float = 0.0
    _peak_equity: float = 0.0
    daily_breaker: bool = False
    killed: bool = False
    kill_reason: str | None = None

    # --- breakers -------------------------------------------------------------------------------
    def update(self, account: Account, prices: Mapping[str, float], now: datetime) -> list[OrderIntent]:
        """Track the day's start equity and the peak; trip the breakers. Returns the orders that close
        every position when the drawdown kill switch trips (once), else nothing."""
        now = as_utc(now)
        equity = account.equity
        if self._day != now.date():
            self._day, self._day_start_equity, self.daily_breaker = now.date(), equity, False
        self._peak_equity = max(self._peak_equity, equity)
        if self._day_start_equity > 0:
            loss = (1 - equity / self._day_start_equity) * 100
            if loss >= self.config.daily_loss_limit_pct:
                self.daily_breaker = True
        if not self.killed and self._peak_equity > 0:
            drawdown = (1 - equity / self._peak_equity) * 100
            if drawdown >= self.config.max_drawdown_pct:
                self.killed = True
                self.kill_reason = f"drawdown {drawdown:.1f}% >= {self.config.max_drawdown_pct}%"
                return [
                    OrderIntent(symbol=p.symbol, side=OrderSide.SELL, qty=rules.floor_qty(p.qty))
                    for p in account.positions
                    if rules.floor_qty(p.qty) > 0
                ]
        return []

    def reset_kill_switch(self) -> None:
        """Only a person calls this: trading resumes, the peak restarts from the next `update`."""
        self.killed, self.kill_reason, self._peak_equity = False, None, 0.0

    # --- the gate -------------------------------------------------------------------------------
    def evaluate(
        self,
        decision: TradeDecision,
        account: Account,
        price: float,
        *,
        now: datetime,
        data_age: timedelta = timedelta(0),
        prices: Mapping[str, float] | None = None,
        returns: Mapping[str, Sequence[float]] | None = None,
        spread_bps: float | None = None,
    ) -> RiskResult:
        """One decision -> an order intent (recorded as sent) or a rejection with its reason.

        `price` is the latest price of the decision's symbol, `prices` those of every held symbol (for
        exposures; held symbols missing from it are valued at their entry price), `returns` recent
        per-symbol returns for the correlation rule. `spread_bps` is the live book's spread: None where
        no book exists (backtests), NaN where the live book is unknown or stale (then `max_spread_bps`,
        when set, refuses the opening: an unknown spread is not a narrow one).
        """
        cfg, now = self.config, as_utc(now)
        symbol = decision.symbol
        if self.killed:
            return RiskResult(reason=f"kill switch: {self.kill_reason}; a person must reset it")
        if decision.action is Action.HOLD:
            return RiskResult(reason="hold" if decision.valid else f"invalid decision: {decision.error}")
        if not symbol:
            return RiskResult(reason="decision names no symbol")
        if not (price > 0 and math.isfinite(price)):
            return RiskResult(reason=f"no valid price for {symbol}")
        if data_age > cfg.max_data_age:
            return RiskResult(reason=f"stale data: {data_age} old > {cfg.max_data_age}")
        if decision.confidence < cfg.min_confidence:
            return RiskResult(reason=f"confidence {decision.confidence:g} < {cfg.min_confidence:g}")
        last = self._last_trade.get(symbol)
        if last is not None and now - last < cfg.cooldown:
            return RiskResult(reason=f"cooldown: {symbol} traded {now - last} ago < {cfg.cooldown}")
        while self._orders and now - self._orders[0] >= timedelta(hours=1):
            self._orders.popleft()
        if len(self._orders) >= cfg.max_orders_per_hour:
            return RiskResult(
                reason=f"{len(self._orders)} orders in the last hour (max {cfg.max_orders_per_hour})"
            )
        equity = account.equity
        if equity <= 0:
            return RiskResult(reason="no equity")
        # Venues name positions BTCUSDT where decisions and prices say BTC/USDT: compare compact names.
        marks = {_compact(s): p for s, p in {**(prices or {}), symbol: price}.items()}
        held = account.position(symbol)
        held_qty = held.qty if held is not None else 0.0

        if decision.action is Action.SELL:
            # Size: a share of equity, never more than is held (spot only: never short).
            want = equity * decision.position_size_pct / 100 / price
            qty = rules.floor_qty(min(want, held_qty))
            if held_qty <= 0:
                return RiskResult(reason=f"nothing held of {symbol} to sell (spot only)")
            if qty <= 0:
                return RiskResult(reason="sell size rounds to zero")
            if held_qty - qty < rules.QTY_INCREMENT * 10 or (held_qty - qty) * price < cfg.min_order_notional:
                qty = rules.floor_qty(held_qty)  # close the remainder rather than leave dust
            return self._approve(symbol, OrderSide.SELL, qty, price, now)

        # BUY: new entries are blocked by the breaker until the next UTC day.
        if self.daily_breaker:
            return RiskResult(
                reason=f"daily loss circuit breaker ({cfg.daily_loss_limit_pct}%) until next UTC day"
            )
        if cfg.max_spread_bps is not None and spread_bps is not None and not spread_bps <= cfg.max_spread_bps:
            if math.isnan(spread_bps):
                return RiskResult(reason="spread unknown: no fresh order book")
            return RiskResult(reason=f"spread {spread_bps:.1f} bps > max {cfg.max_spread_bps:g} bps")
        open_symbols = {_compact(p.symbol) for p in account.positions if p.qty > 0}
        if held_qty <= 0 and len(open_symbols) >= cfg.max_open_positions:
            return RiskResult(reason=f"{len(open_symbols)} open positions (max {cfg.max_open_positions})")
        exposure: dict[str, float] = {}
        for p in account.positions:
            key = _compact(p.symbol)
            exposure[key] = exposure.get(key, 0.0) + p.qty * marks.get(key, p.avg_entry_price)
        symbol_room = equity * cfg.max_symbol_exposure_pct / 100 - exposure.get(_compact(symbol), 0.0)
        total_room = equity * cfg.max_total_exposure_pct / 100 - sum(exposure.values())
        corr_room = math.inf
        if returns:
            group = correlated_with(symbol, returns, cfg.correlation_threshold, cfg.correlation_window)
            group = {_compact(s) for s in group} | {_compact(symbol)}
            corr_room = equity * cfg.max_correlated_exposure_pct / 100 - sum(
                v for s, v in exposure.items() if s in group
            )
        fees = rules.FeeSchedule()
        reserve_factor = rules.buy_reserve(1.0, cfg.order_type, fees, rules.SlippageModel())
        cash_room = account.cash / reserve_factor
        # Size comes from the decision's share of equity scaled by confidence, then every cap.
        wanted = equity * decision.position_size_pct / 100 * (decision.confidence / 100)
        notional = min(wanted, symbol_room, total_room, corr_room, cash_room, cfg.max_order_notional)
        qty = rules.floor_qty(max(notional, 0.0) / price)
        if qty * price < cfg.min_order_notional:
            caps = {
                "requested size": wanted,
                "symbol exposure": symbol_room,
                "total exposure": total_room,
                "correlated exposure": corr_room,
                "cash": cash_room,
            }
            binding = min(caps, key=lambda k: caps[k])
            return RiskResult(
                reason=f"order ${qty * price:.2f} below minimum ${cfg.min_order_notional:g} (limited by {binding})"
            )
        return self._approve(symbol, OrderSide.BUY, qty, price, now)

    def _approve(self, symbol: str, side: OrderSide, qty: float, price: float, now: datetime) -> RiskResult:
        self._last_trade[symbol] = now
        self._orders.append(now)
        if self.config.order_type is OrderType.LIMIT:
            intent = OrderIntent(
                symbol=symbol, side=side, type=OrderType.LIMIT, qty=qty, limit_price=rules.round_price(price)
            )
        else:
            intent = OrderIntent(symbol=symbol, side=side, qty=qty)
        return RiskResult(intent=intent)


def _compact(symbol: str) -> str:
    return symbol.replace("/", "")


def correlated_with(
    symbol: str, returns: Mapping[str, Sequence[float]], threshold: float, window: int
) -> set[str]:
    """Symbols whose last `window` returns correlate with `symbol`'s above `threshold` (one bet)."""
    mine = np.asarray(returns.get(symbol, ()), dtype=float)[-window:]
    out: set[str] = set()
    if mine.size < 3 or np.std(mine) == 0:
        return out
    for other, values in returns.items():
        theirs = np.asarray(values, dtype=float)[-window:]
        n = min(mine.size, theirs.size)
        if other == symbol or n < 3 or np.std(theirs[-n:]) == 0 or np.std(mine[-n:]) == 0:
            continue
        if np.corrcoef(mine[-n:], theirs[-n:])[0, 1] > threshold:
            out.add(other)
    return out

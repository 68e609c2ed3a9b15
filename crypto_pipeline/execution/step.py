"""The decision step: what happens at a decision time, in backtest, live and MCP alike.

    account (venue) -> the drawdown switch -> each state with its portfolio -> provider -> parsed
    decisions (invalid: HOLD) -> risk engine -> order intent -> journal (decision and verdict, written
    ahead) -> venue -> the venue's answer (journaled by the venue)

The callers differ only in their venue (`SimulatedVenue` or the live `OrderDesk`), their clock (the
decision time and the data age they measure) and what they know of the market (`MarketView`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from crypto_pipeline.execution.venue import Venue, client_order_id
from crypto_pipeline.journal.writer import Journal
from crypto_pipeline.llm.decision import TradeDecision
from crypto_pipeline.llm.prompts import build_user_prompt
from crypto_pipeline.llm.provider import DecisionProvider, decide_safely
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.risk import RiskEngine, RiskResult
from crypto_pipeline.state import MarketState, Portfolio
from crypto_pipeline.trading import Account

# A symbol without any bar is as stale as can be: the risk engine's data-age rule refuses it.
NO_DATA = timedelta(days=365)


def data_age(now: datetime, newest_bar_open: datetime | None, base: Timeframe) -> timedelta:
    """How old the newest bar is at `now`: zero when it closed exactly then (never negative)."""
    if newest_bar_open is None:
        return NO_DATA
    return max(now - (newest_bar_open + base.duration), timedelta(0))


@dataclass(frozen=True)
class MarketView:
    """What the caller knows of the market at the decision time, per symbol: the marks the account is
    valued at, recent returns (the correlation rule), data ages, the live book's spread (None in a
    backtest, which has no book; NaN where the live book is unknown) and the book to journal."""

    marks: Mapping[str, float]
    returns: Mapping[str, Sequence[float]] = field(default_factory=dict)
    data_age: Mapping[str, timedelta] = field(default_factory=dict)
    spread_bps: Mapping[str, float] = field(default_factory=dict)
    order_books: Mapping[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Gated:
    """What became of one decision: the state it saw, the risk verdict, the client id of its order
    (approved only) and the venue's order (None when rejected, or when the venue refused it)."""

    decision: TradeDecision
    state: MarketState | None
    result: RiskResult
    client_order_id: str | None = None
    order: dict[str, Any] | None = None
    # From the decision entering the risk engine to the venue's answer (orders only).
    order_ms: float | None = None


Decide = Callable[[DecisionProvider, list[MarketState]], list[TradeDecision]]


class DecisionStep:
    """One decision time, end to end. `decide` may put a cache in front of the provider (backtests).
    The decision and verdict rows are journaled before the venue is called; the live desk makes them
    durable, with the intent, before the order leaves (`Journal.write_ahead`; a backtest, which loses
    nothing to a crash, writes its journal at the end)."""

    def __init__(
        self,
        provider: DecisionProvider,
        risk: RiskEngine,
        venue: Venue,
        journal: Journal,
        *,
        session_id: str,
        decide: Decide = decide_safely,
        show_prompt: bool = True,
    ) -> None:
        self.provider, self.risk, self.venue, self.journal = provider, risk, venue, journal
        self.session_id = session_id
        self.decide = decide
        # False for an outside agent's own request (MCP): no model saw a prompt.
        self.show_prompt = show_prompt

    def __call__(
        self,
        at: datetime,
        states: Sequence[MarketState],
        market: MarketView,
        *,
        missing: Mapping[str, str] | None = None,
    ) -> list[Gated]:
        """Decide on `states` (without their portfolio: the venue's account gives it) at `at`; symbols in
        `missing` (symbol -> why) get an invalid HOLD."""
        account = self.venue.account()
        self.close_on_drawdown(account, market.marks, at)
        batch = [s.with_portfolio(Portfolio.from_account(account, s.symbol)) for s in states]
        decisions = self.decide(self.provider, batch) if batch else []
        name = getattr(self.provider, "name", type(self.provider).__name__)
        for symbol, why in (missing or {}).items():
            decisions.append(
                TradeDecision.invalid(f"no market state: {why}", symbol=symbol, at=at, provider=name)
            )
        shown = {s.symbol: s for s in batch}
        gated = []
        for decision in decisions:
            outcome = self.gate(decision, shown.get(decision.symbol or ""), account, at, market)
            gated.append(outcome)
            if outcome.order is not None:
                account = self.venue.account()  # the next decision sees this order's effect
        return gated

    def close_on_drawdown(self, account: Account, marks: Mapping[str, float], at: datetime) -> int:
        """`RiskEngine.update` before a batch of decisions; when its drawdown switch trips, the orders
        that close every position go out (client ids of purpose "kill"). Returns how many were sent."""
        intents = self.risk.update(account, marks, at)
        for intent in intents:
            self.venue.submit(intent, client_order_id(self.session_id, intent.symbol, at, "kill"), at)
        return len(intents)

    def gate(
        self,
        decision: TradeDecision,
        state: MarketState | None,
        account: Account,
        at: datetime,
        market: MarketView,
    ) -> Gated:
        """One decision through the risk engine (no state: no valid price, so no order), the journal and,
        approved, the venue."""
        symbol = decision.symbol or ""
        if (at, symbol) in self.venue.decided:
            # Journaled before a restart: that decision and its order stand, whatever is decided now.
            cid = self.venue.decided[(at, symbol)]
            order = self.venue.resume(cid, at) if cid else None
            return Gated(decision, state, RiskResult(reason="decided before a restart"), cid, order)
        started = time.perf_counter()
        result = self.risk.evaluate(
            decision,
            account,
            state.price if state is not None else math.nan,
            now=at,
            data_age=market.data_age.get(symbol, NO_DATA),
            prices=market.marks,
            returns=market.returns,
            spread_bps=market.spread_bps.get(symbol),
        )
        prompt = build_user_prompt(state) if state is not None and self.show_prompt else ""
        self.journal.decision(at, state, prompt, decision, order_book=market.order_books.get(symbol))
        if result.intent is None:
            self.journal.verdict(at, symbol, decision.action.value, result, None)
            return Gated(decision, state, result)
        cid = client_order_id(self.session_id, symbol, at)
        self.journal.verdict(at, symbol, decision.action.value, result, cid)
        order = self.venue.submit(result.intent, cid, at)
        return Gated(decision, state, result, cid, order, (time.perf_counter() - started) * 1e3)

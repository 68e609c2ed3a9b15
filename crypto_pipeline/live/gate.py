"""One decision from the risk engine to the venue: the verdict, the journal's decision and verdict rows
and, when approved, the order under its idempotent client id. The live loop and the MCP server's
`place_order` both go through `gate_decision`, so an order an outside agent asks for passes exactly
the gate the model's orders pass."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from crypto_pipeline.live.orders import OrderDesk, client_order_id
from crypto_pipeline.llm.decision import TradeDecision
from crypto_pipeline.risk import RiskEngine, RiskResult
from crypto_pipeline.state import MarketState
from crypto_pipeline.trading import Account


@dataclass(frozen=True)
class Gated:
    """What became of one decision: the risk verdict, the client id of its order (approved only) and
    the venue's order (None when rejected, or when the venue refused it: see `OrderDesk.refused`).
    A decision this session journaled before a restart stands: `result` then says so, and the client
    id and order are that decision's."""

    result: RiskResult
    client_order_id: str | None = None
    order: dict[str, Any] | None = None


def gate_decision(
    decision: TradeDecision,
    state: MarketState | None,
    prompt: str,
    account: Account,
    *,
    risk: RiskEngine,
    desk: OrderDesk,
    at: datetime,
    data_age: timedelta,
    prices: dict[str, float],
    returns: dict[str, list[float]],
    spread_bps: float | None = None,
    order_book: dict[str, Any] | None = None,
) -> Gated:
    """Evaluate `decision` at `at` (the state's price; no state, no valid price), journal the decision
    and the verdict, and submit the approved order: the desk flushes the journal before it sends
    (write ahead); otherwise the caller flushes. A (time, symbol) the session journaled before a
    restart is not decided again (`OrderDesk.decided`). `spread_bps` is for the risk engine's spread
    rule (see `RiskEngine.evaluate`), `order_book` the live book as the journal keeps it, whether or
    not the prompt showed it."""
    symbol = decision.symbol or ""
    if (at, symbol) in desk.decided:  # journaled before a restart: that decision and its order stand
        cid = desk.decided[(at, symbol)]
        return Gated(
            RiskResult(reason="decided before a restart"), cid, desk.resume(cid, at) if cid else None
        )
    price = state.price if state is not None else float("nan")
    result = risk.evaluate(
        decision,
        account,
        price,
        now=at,
        data_age=max(data_age, timedelta(0)),
        prices=prices,
        returns=returns,
        spread_bps=spread_bps,
    )
    desk.journal.decision(at, state, prompt, decision, order_book=order_book)
    if result.intent is None:
        desk.journal.verdict(at, symbol, decision.action.value, result, None)
        return Gated(result)
    cid = client_order_id(desk.session_id, symbol, at)
    desk.journal.verdict(at, symbol, decision.action.value, result, cid)
    return Gated(result, cid, desk.submit(result.intent, cid, at))


def close_on_drawdown(
    risk: RiskEngine, desk: OrderDesk, account: Account, prices: dict[str, float], at: datetime
) -> int:
    """`RiskEngine.update` before a batch of decisions; when its drawdown switch trips, the orders that
    close every position go out (client ids of purpose "kill"). Returns how many were sent."""
    intents = risk.update(account, prices, at)
    for intent in intents:
        desk.submit(intent, client_order_id(desk.session_id, intent.symbol, at, "kill"), at)
    return len(intents)


def last_closes(frame: pl.DataFrame) -> dict[str, float]:
    """The newest close of each symbol of a bars frame: the marks the risk engine values holdings at."""
    if frame.is_empty():
        return {}
    last = frame.group_by("symbol").agg(pl.col("close").sort_by("timestamp").last())
    return {row["symbol"]: float(row["close"]) for row in last.iter_rows(named=True)}


def recent_returns(frame: pl.DataFrame, window: int) -> dict[str, list[float]]:
    """Each symbol's last `window` bar returns, for the risk engine's correlation rule."""
    out = {}
    for (symbol,), rows in frame.partition_by("symbol", as_dict=True).items():
        closes = rows.sort("timestamp")["close"].tail(window + 1)
        out[str(symbol)] = closes.pct_change().drop_nulls().to_list()
    return out

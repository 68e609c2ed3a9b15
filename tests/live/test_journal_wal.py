"""The journal's write-ahead log: rows written ahead survive a process that dies before its flush, and
the next journal of the session stores them; a line torn by the kill is skipped."""

from __future__ import annotations

from datetime import UTC, datetime

from crypto_pipeline.journal.writer import Journal
from crypto_pipeline.llm.decision import Action, TradeDecision
from crypto_pipeline.risk import RiskResult
from crypto_pipeline.trading import OrderIntent, OrderSide
from crypto_pipeline.warehouse import Warehouse

AT = datetime(2024, 8, 2, 13, tzinfo=UTC)


def journal_one_order(journal: Journal) -> None:
    decision = TradeDecision(
        action=Action.BUY, confidence=80, position_size_pct=10, symbol="BTC/USDT", at=AT, provider="test"
    )
    intent = OrderIntent(symbol="BTC/USDT", side=OrderSide.BUY, qty=0.01)
    journal.decision(AT, None, "the prompt", decision)
    journal.verdict(AT, "BTC/USDT", "BUY", RiskResult(intent=intent), "s1-BTCUSDT-20240802T1300-d")


def test_rows_written_ahead_survive_a_process_that_never_flushed(tmp_path) -> None:
    warehouse = Warehouse(tmp_path)
    dead = Journal(warehouse, "s1")
    journal_one_order(dead)
    dead.write_ahead()
    assert dead.wal_path is not None and dead.wal_path.exists()
    assert warehouse.read("decisions").is_empty()  # not flushed: only the log has them
    # The process is gone; the session starts again.
    restarted = Journal(warehouse, "s1")
    assert restarted.recovered_rows == 2
    assert not dead.wal_path.exists()
    decisions, verdicts = warehouse.read("decisions"), warehouse.read("risk_verdicts")
    assert decisions.height == 1 and decisions["action"][0] == "BUY" and decisions["time"][0] == AT
    assert verdicts["client_order_id"].to_list() == ["s1-BTCUSDT-20240802T1300-d"]
    assert verdicts["reasons"].to_list() == [[]] and verdicts["qty"][0] == 0.01


def test_a_flush_empties_the_log_and_a_torn_line_is_skipped(tmp_path) -> None:
    warehouse = Warehouse(tmp_path)
    journal = Journal(warehouse, "s2")
    journal_one_order(journal)
    journal.write_ahead()
    journal.flush()
    assert journal.wal_path is not None and not journal.wal_path.exists()
    assert warehouse.read("decisions").height == 1
    journal_one_order(journal)  # the same event again: stored once
    journal.write_ahead()
    with journal.wal_path.open("a") as log_file:
        log_file.write('{"table": "decisions", "row": {"ti')  # killed in the middle of a line
    assert Journal(warehouse, "s2").recovered_rows == 2
    assert warehouse.read("decisions").height == 1 and warehouse.read("risk_verdicts").height == 1

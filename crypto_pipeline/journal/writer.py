"""The live journal: every prompt and decision, risk verdict, order event, fill and equity snapshot,
written to the warehouse's append-only journal tables (`decisions`, `risk_verdicts`, `orders`, `fills`,
`equity`; see `warehouse/tables.py`). Re-writing an event is a no-op, so a restarted session that
journals what it finds again adds nothing twice. Holds no secret: only what the venue and model said."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

import polars as pl

from crypto_pipeline.llm.decision import TradeDecision
from crypto_pipeline.risk import RiskResult
from crypto_pipeline.state import MarketState
from crypto_pipeline.warehouse import Warehouse, table_spec
from crypto_pipeline.warehouse.tables import TIMESTAMP_DTYPE

JOURNAL_TABLES = ("sessions", "decisions", "risk_verdicts", "orders", "fills", "equity")
log = logging.getLogger(__name__)
SHADOW_INFIX = "-shadow-v"


def shadow_run_id(session_id: str, version: str) -> str:
    """The run id a shadow book of `version` journals under, beside session `session_id`."""
    return f"{session_id}{SHADOW_INFIX}{version}"


class Journal:
    """Rows gathered in memory and written to the warehouse by `flush` (once per decision batch and at
    the end). Before an order leaves the process, `write_ahead` appends the rows not yet stored to the
    session's write-ahead log (`<warehouse>/journal_wal/<session>.jsonl`, fsynced: milliseconds, where
    a Parquet write takes tens); a journal opened on a session whose log is not empty (the process died
    before its flush) stores those rows first. Without a warehouse (a backtest's journal) rows stay in
    memory until `write_to` stores them under a run id."""

    def __init__(self, warehouse: Warehouse | None, session_id: str) -> None:
        self.warehouse = warehouse
        self.session_id = session_id
        self._rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._lock = threading.Lock()
        # Held from taking the pending rows to emptying the log: the log never loses a row not stored.
        self._wal_lock = threading.Lock()
        self._logged: dict[str, int] = defaultdict(int)  # rows of `_rows[table]` already in the log
        self.wal_path = warehouse.root / "journal_wal" / f"{session_id}.jsonl" if warehouse else None
        self.written: dict[str, int] = defaultdict(int)
        # Called with (table, row) as each row is journaled: metrics and alerts follow the journal.
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self._keys: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
        self.recovered_rows = self._recover()

    def decision(
        self,
        at: datetime,
        state: MarketState | None,
        prompt: str,
        decision: TradeDecision,
        order_book: dict[str, Any] | None = None,
    ) -> None:
        """`state` is the state exactly as the prompt rendered it (a replay renders it again);
        `order_book` the live book at the decision, kept apart so that a book the prompt did not show
        cannot creep into a replayed prompt."""
        self._add(
            "decisions",
            time=at,
            symbol=decision.symbol or (state.symbol if state else None),
            provider=decision.provider,
            model_version=decision.model_version,
            prompt_version=decision.prompt_version,
            prompt_hash=decision.prompt_hash,
            prompt=prompt,
            state=state.model_dump_json() if state is not None else None,
            order_book=json.dumps(order_book) if order_book is not None else None,
            raw_output=decision.raw_text,
            decision=decision.model_dump_json(exclude={"raw_text"}),
            action=decision.action.value,
            valid=decision.valid,
            invalid_reason=decision.error,
            latency_ms=decision.latency_ms,
            prompt_tokens=decision.prompt_tokens,
            completion_tokens=decision.completion_tokens,
        )

    def session(
        self,
        at: datetime,
        *,
        provider: str,
        model_version: str | None,
        note: str,
        role: str = "trading",
        trading_run_id: str | None = None,
        venue: str | None = None,
        symbols: list[str] | None = None,
    ) -> None:
        """What this run decides with and why (every fallback said), once per start."""
        self._add(
            "sessions",
            time=at,
            provider=provider,
            model_version=model_version,
            note=note,
            role=role,
            trading_run_id=trading_run_id or self.session_id,
            venue=venue,
            symbols=symbols,
        )

    def recovered(self, at: datetime, symbol: str, order: dict[str, Any]) -> None:
        """The decision and approved verdict of a venue order whose own rows a crash lost (the
        venue's order is all that is left of them: no prompt, no state)."""
        cid = order.get("client_order_id")
        side = _text(order.get("side")) or ""
        note = f"recovered from the venue after a restart: order {cid} ({_text(order.get('status'))})"
        self._add(
            "decisions",
            time=at,
            symbol=symbol,
            provider="venue",
            raw_output=note,
            action=side.upper() or None,
            valid=True,  # only a valid decision becomes an order
        )
        self._add(
            "risk_verdicts",
            time=at,
            symbol=symbol,
            action=side.upper() or None,
            verdict="approved",
            reasons=[note],
            side=side or None,
            qty=_float(order.get("qty")),
            notional=_float(order.get("notional")),
            client_order_id=cid,
        )

    def stored(self, table: str, columns: list[str]) -> pl.DataFrame:
        """This session's rows of `table` already in the warehouse (what a restarted session journaled
        before)."""
        return (
            self.warehouse.scan(table).filter(pl.col("run_id") == self.session_id).select(columns).collect()
        )

    def verdict(
        self, at: datetime, symbol: str, action: str, result: RiskResult, client_order_id: str | None
    ) -> None:
        intent = result.intent
        self._add(
            "risk_verdicts",
            time=at,
            symbol=symbol,
            action=action,
            verdict="approved" if intent is not None else "rejected",
            reasons=[result.reason] if result.reason else [],
            side=intent.side.value if intent is not None else None,
            qty=intent.qty if intent is not None else None,
            notional=intent.notional if intent is not None else None,
            client_order_id=client_order_id,
        )

    def order_event(self, at: datetime, order: dict[str, Any], status: str | None = None) -> None:
        self._add(
            "orders",
            time=at,
            symbol=order.get("symbol"),
            client_order_id=order.get("client_order_id"),
            order_id=order.get("id"),
            side=_text(order.get("side")),
            type=_text(order.get("type") or order.get("order_type")),
            time_in_force=_text(order.get("time_in_force")),
            qty=_float(order.get("qty")),
            notional=_float(order.get("notional")),
            limit_price=_float(order.get("limit_price")),
            status=status or _text(order.get("status")),
            filled_qty=_float(order.get("filled_qty")),
            filled_avg_price=_float(order.get("filled_avg_price")),
        )

    def fill(
        self,
        at: datetime,
        order: dict[str, Any],
        fill_id: str,
        qty: float,
        price: float,
        fee: float | None = None,
    ) -> None:
        self._add(
            "fills",
            time=at,
            symbol=order.get("symbol"),
            fill_id=fill_id,
            order_id=order.get("id"),
            client_order_id=order.get("client_order_id"),
            side=_text(order.get("side")),
            qty=qty,
            price=price,
            fee=fee,
            # Spot fees are charged in the quote currency (BTC/USDT: USDT).
            fee_currency=str(order.get("symbol") or "").partition("/")[2] or None
            if fee is not None
            else None,
        )

    def equity(
        self,
        at: datetime,
        *,
        equity: float,
        cash: float,
        positions_value: float,
        unrealized: float | None,
    ) -> None:
        self._add(
            "equity",
            time=at,
            equity=equity,
            cash=cash,
            positions_value=positions_value,
            exposure=positions_value / equity * 100 if equity > 0 else None,
            unrealized_pnl=unrealized,
        )

    def write_ahead(self) -> None:
        """Make every row journaled so far durable now (appended to the log and fsynced)."""
        if self.wal_path is None:
            return
        with self._wal_lock:
            with self._lock:
                lines = [
                    json.dumps({"table": table, "row": row}, default=_json_value)
                    for table, rows in self._rows.items()
                    for row in rows[self._logged[table] :]
                ]
                self._logged = defaultdict(int, {t: len(rows) for t, rows in self._rows.items()})
            if not lines:
                return
            self.wal_path.parent.mkdir(parents=True, exist_ok=True)
            with self.wal_path.open("a", encoding="utf-8") as log_file:
                log_file.write("\n".join(lines) + "\n")
                log_file.flush()
                os.fsync(log_file.fileno())

    def flush(self) -> None:
        """Write the gathered rows; then the tables' DuckDB views show them (one refresh at most)."""
        if self.warehouse is None:
            return
        with self._wal_lock:
            with self._lock:
                pending, self._rows, self._logged = self._rows, defaultdict(list), defaultdict(int)
            self._store(self.warehouse, pending)
            if self.wal_path is not None:
                self.wal_path.unlink(missing_ok=True)  # all it held is in the tables now

    def _recover(self) -> int:
        """Store the rows a previous process wrote ahead but never flushed; returns how many."""
        if self.wal_path is None or self.warehouse is None or not self.wal_path.exists():
            return 0
        pending: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for line in self.wal_path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a process killed while writing it: its order never left
            spec = table_spec(entry["table"])
            row = {
                c: datetime.fromisoformat(v)
                if isinstance(v, str) and spec.schema.get(c) == TIMESTAMP_DTYPE
                else v
                for c, v in entry["row"].items()
            }
            pending[entry["table"]].append(row)
        self._store(self.warehouse, pending)
        self.wal_path.unlink()
        count = sum(len(rows) for rows in pending.values())
        log.warning(
            "journal: %d row(s) written ahead by an interrupted session %s stored", count, self.session_id
        )
        return count

    def write_to(self, warehouse: Warehouse, run_id: str | None = None) -> dict[str, int]:
        """Store the rows not yet written in `warehouse`, renamed to `run_id` when given (the run id and
        the client ids it prefixes); returns the rows written per table. The rows stay: writing them
        again adds nothing (the journal tables keep the first row of an event)."""
        with self._lock:
            pending = {t: list(rows) for t, rows in self._rows.items()}
        if run_id is not None and run_id != self.session_id:
            pending = {t: [_renamed(r, self.session_id, run_id) for r in rows] for t, rows in pending.items()}
        before = dict(self.written)
        self._store(warehouse, pending)
        return {t: n - before.get(t, 0) for t, n in self.written.items() if n - before.get(t, 0)}

    def _store(self, warehouse: Warehouse, pending: dict[str, list[dict[str, Any]]]) -> None:
        for table, rows in pending.items():
            spec = table_spec(table)
            schema = {name: dtype for name, dtype in spec.schema.items() if name != spec.stamp_column}
            frame = pl.DataFrame([{c: row.get(c) for c in schema} for row in rows], schema=schema)
            warehouse.upsert(table, frame, views=False)
            self.written[table] += frame.height
        if pending:
            warehouse.keep_views_current(*pending)

    def _add(self, table: str, **row: Any) -> None:
        entry = {"run_id": self.session_id, **row}
        key = tuple(entry.get(c) for c in table_spec(table).key)
        with self._lock:
            self._rows[table].append(entry)
            # The same event seen twice (a REST answer and a stream update) is stored once: tell once.
            new = key not in self._keys[table]
            self._keys[table].add(key)
        for listener in self.listeners if new else ():
            try:
                listener(table, entry)
            except Exception:  # noqa: BLE001 - monitoring never stops the journal or the loop
                log.exception("journal listener failed on a %s row", table)


def _renamed(row: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    out = {**row, "run_id": new}
    for column in ("client_order_id", "order_id", "fill_id"):
        value = out.get(column)
        if isinstance(value, str) and value.startswith(f"{old}-"):
            out[column] = new + value[len(old) :]
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))

"""SQLite persistence (WAL) of the account, orders, fills and positions: a restart loses nothing."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from crypto_pipeline.exchange.records import AccountRecord, FillRecord, OrderRecord, PositionRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS account (id TEXT PRIMARY KEY, account_number TEXT, cash REAL, created_at_ns INTEGER);
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY, client_order_id TEXT UNIQUE NOT NULL, symbol TEXT, asset_id TEXT, side TEXT, type TEXT,
    time_in_force TEXT, qty REAL, notional REAL, limit_price REAL, stop_price REAL, status TEXT,
    created_at_ns INTEGER, updated_at_ns INTEGER, filled_qty REAL, filled_avg_price REAL, filled_at_ns INTEGER,
    canceled_at_ns INTEGER, stop_triggered INTEGER, next_bar_open_ns INTEGER, working_qty REAL, fees_paid REAL
);
CREATE TABLE IF NOT EXISTS fills (
    execution_id TEXT PRIMARY KEY, order_id TEXT, symbol TEXT, side TEXT, qty REAL, price REAL, fee REAL,
    liquidity TEXT, at_ns INTEGER
);
CREATE TABLE IF NOT EXISTS positions (symbol TEXT PRIMARY KEY, asset_id TEXT, qty REAL, cost_basis REAL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

_ORDER_COLUMNS = [f.name for f in dataclasses.fields(OrderRecord)]


class ExchangeStore:
    """One SQLite file; every state change is committed before the caller answers."""

    def __init__(self, path: Path, reset: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if reset:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        # check_same_thread=False: the server's loop thread uses it, the starting thread only reads once.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # --- reads at start ---------------------------------------------------------------------
    def load_account(self) -> AccountRecord | None:
        row = self._db.execute("SELECT id, account_number, cash, created_at_ns FROM account").fetchone()
        return AccountRecord(*row) if row else None

    def load_orders(self) -> list[OrderRecord]:
        rows = self._db.execute(
            f"SELECT {', '.join(_ORDER_COLUMNS)} FROM orders ORDER BY created_at_ns"
        ).fetchall()
        orders = []
        for row in rows:
            values = dict(zip(_ORDER_COLUMNS, row, strict=True))
            values["stop_triggered"] = bool(values["stop_triggered"])
            orders.append(OrderRecord(**values))
        return orders

    def load_positions(self) -> list[PositionRecord]:
        rows = self._db.execute("SELECT symbol, asset_id, qty, cost_basis FROM positions").fetchall()
        return [PositionRecord(symbol=r[0], asset_id=r[1], qty=r[2], cost_basis=r[3]) for r in rows]

    def load_fills(self, order_id: str | None = None) -> list[FillRecord]:
        sql = "SELECT * FROM fills" + (" WHERE order_id = ?" if order_id else "") + " ORDER BY at_ns"
        rows = self._db.execute(sql, (order_id,) if order_id else ()).fetchall()
        return [FillRecord(*row) for row in rows]

    def last_activity_ns(self) -> int | None:
        """The latest replay time at which an order changed (None for an account without orders)."""
        row = self._db.execute("SELECT MAX(updated_at_ns) FROM orders").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # --- writes -------------------------------------------------------------------------------
    def save(
        self,
        account: AccountRecord | None = None,
        orders: list[OrderRecord] | tuple[OrderRecord, ...] = (),
        fills: list[FillRecord] | tuple[FillRecord, ...] = (),
        positions: list[PositionRecord] | tuple[PositionRecord, ...] = (),
    ) -> None:
        """Write one state change atomically."""
        with self._transaction():
            if account is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO account VALUES (?, ?, ?, ?)",
                    (account.id, account.account_number, account.cash, account.created_at_ns),
                )
            for order in orders:
                values = dataclasses.astuple(order)
                placeholders = ", ".join("?" * len(values))
                self._db.execute(f"INSERT OR REPLACE INTO orders VALUES ({placeholders})", values)
            for fill in fills:
                self._db.execute(
                    "INSERT INTO fills VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", dataclasses.astuple(fill)
                )
            for position in positions:
                if position.qty > 0:
                    self._db.execute(
                        "INSERT OR REPLACE INTO positions VALUES (?, ?, ?, ?)",
                        (position.symbol, position.asset_id, position.qty, position.cost_basis),
                    )
                else:
                    self._db.execute("DELETE FROM positions WHERE symbol = ?", (position.symbol,))

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")

"""The exchange's own state as plain value types: account, orders, fills, positions."""

from __future__ import annotations

from dataclasses import dataclass

OPEN_STATUSES = frozenset({"new", "partially_filled", "accepted", "pending_new"})


@dataclass
class AccountRecord:
    id: str
    account_number: str
    cash: float
    created_at_ns: int


@dataclass
class OrderRecord:
    id: str
    client_order_id: str
    symbol: str
    asset_id: str
    side: str
    type: str
    time_in_force: str
    qty: float | None
    notional: float | None
    limit_price: float | None
    stop_price: float | None
    status: str
    created_at_ns: int
    updated_at_ns: int
    filled_qty: float = 0.0
    filled_avg_price: float | None = None
    filled_at_ns: int | None = None
    canceled_at_ns: int | None = None
    stop_triggered: bool = False
    # First bar (by open time) this order may still trade against; earlier bars are spent or predate it.
    next_bar_open_ns: int = 0
    # A notional buy's quantity is fixed when it is accepted: notional / the price it was checked at.
    working_qty: float = 0.0
    fees_paid: float = 0.0

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def remaining_qty(self) -> float:
        return max(0.0, round(self.working_qty - self.filled_qty, 9))


@dataclass
class FillRecord:
    execution_id: str
    order_id: str
    symbol: str
    side: str
    qty: float
    price: float
    fee: float
    liquidity: str  # "maker" or "taker"
    at_ns: int


@dataclass
class PositionRecord:
    symbol: str
    asset_id: str
    qty: float = 0.0
    cost_basis: float = 0.0

    @property
    def avg_entry_price(self) -> float:
        return self.cost_basis / self.qty if self.qty else 0.0

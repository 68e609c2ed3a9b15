"""The exchange's own mutable state (account, orders, fills, positions), typed with the trading model's
enums, and its conversion to the trading model's frozen value types (`crypto_pipeline.trading`)."""

from __future__ import annotations

from dataclasses import dataclass

from crypto_pipeline.exchange.clock import from_ns as to_datetime
from crypto_pipeline.trading import (
    OPEN_STATUSES,
    Fill,
    Liquidity,
    Order,
    OrderSide,
    OrderStatus,
    OrderType,
    Position,
    TimeInForce,
)
from crypto_pipeline.trading.rules import QTY_DECIMALS


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
    side: OrderSide
    type: OrderType
    time_in_force: TimeInForce
    qty: float | None
    notional: float | None
    limit_price: float | None
    stop_price: float | None
    status: OrderStatus
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

    def __post_init__(self) -> None:
        # Rows read back from SQLite hold the enums' string values.
        self.side = OrderSide(self.side)
        self.type = OrderType(self.type)
        self.time_in_force = TimeInForce(self.time_in_force)
        self.status = OrderStatus(self.status)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def remaining_qty(self) -> float:
        return max(0.0, round(self.working_qty - self.filled_qty, QTY_DECIMALS))

    def to_order(self) -> Order:
        """This order as the trading model's value type."""
        return Order(
            id=self.id,
            client_order_id=self.client_order_id,
            symbol=self.symbol,
            side=self.side,
            type=self.type,
            time_in_force=self.time_in_force,
            qty=self.qty,
            notional=self.notional,
            limit_price=self.limit_price,
            stop_price=self.stop_price,
            status=self.status,
            created_at=to_datetime(self.created_at_ns),
            updated_at=to_datetime(self.updated_at_ns),
            filled_qty=self.filled_qty,
            filled_avg_price=self.filled_avg_price,
            filled_at=None if self.filled_at_ns is None else to_datetime(self.filled_at_ns),
            canceled_at=None if self.canceled_at_ns is None else to_datetime(self.canceled_at_ns),
        )


@dataclass
class FillRecord:
    execution_id: str
    order_id: str
    symbol: str
    side: OrderSide
    qty: float
    price: float
    fee: float
    liquidity: Liquidity
    at_ns: int

    def __post_init__(self) -> None:
        self.side = OrderSide(self.side)
        self.liquidity = Liquidity(self.liquidity)

    def to_fill(self) -> Fill:
        return Fill(
            execution_id=self.execution_id,
            order_id=self.order_id,
            symbol=self.symbol,
            side=self.side,
            qty=self.qty,
            price=self.price,
            fee=self.fee,
            liquidity=self.liquidity,
            at=to_datetime(self.at_ns),
        )


@dataclass
class PositionRecord:
    symbol: str
    asset_id: str
    qty: float = 0.0
    cost_basis: float = 0.0

    @property
    def avg_entry_price(self) -> float:
        return self.cost_basis / self.qty if self.qty else 0.0

    def to_position(self) -> Position:
        return Position(symbol=self.symbol, qty=self.qty, avg_entry_price=self.avg_entry_price)

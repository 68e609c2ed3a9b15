"""Order side, type, time in force and status: alpaca-py's own enums, so that an order built here is
what alpaca-py sends and receives, plus the one thing Alpaca has no enum for (maker or taker)."""

from __future__ import annotations

from enum import StrEnum

from alpaca.trading.enums import OrderSide, OrderStatus, OrderType, TimeInForce


class Liquidity(StrEnum):
    """Whether a fill added liquidity (a resting order: maker) or took it (taker); it sets the fee."""

    MAKER = "maker"
    TAKER = "taker"


# Statuses in which an order can still trade (Alpaca's "open" orders).
OPEN_STATUSES: frozenset[OrderStatus] = frozenset(
    {OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED, OrderStatus.ACCEPTED, OrderStatus.PENDING_NEW}
)

__all__ = ["OPEN_STATUSES", "Liquidity", "OrderSide", "OrderStatus", "OrderType", "TimeInForce"]

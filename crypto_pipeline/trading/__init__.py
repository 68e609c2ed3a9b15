"""The one trading model: side/type/time-in-force/status enums, order intents, orders, fills, positions
and accounts, and Alpaca's crypto rules (`crypto_pipeline.trading.rules`). It imports nothing else of
this project; the exchange, the backtest, the risk engine and the live loop all speak its types."""

from crypto_pipeline.trading.enums import (
    OPEN_STATUSES,
    Liquidity,
    OrderSide,
    OrderStatus,
    OrderType,
    TimeInForce,
)
from crypto_pipeline.trading.models import Account, Fill, Order, OrderIntent, Position

__all__ = [
    "OPEN_STATUSES",
    "Account",
    "Fill",
    "Liquidity",
    "Order",
    "OrderIntent",
    "OrderSide",
    "OrderStatus",
    "OrderType",
    "Position",
    "TimeInForce",
]

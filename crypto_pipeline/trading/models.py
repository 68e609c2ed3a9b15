"""The trading model's value types: what someone wants to trade (`OrderIntent`), what a venue made of
it (`Order`, `Fill`) and what the account holds (`Position`, `Account`). Frozen pydantic models with
timezone-aware UTC times; quantities and prices are floats on Alpaca's grid (see `rules`)."""

from __future__ import annotations

from typing import Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from crypto_pipeline.trading import rules
from crypto_pipeline.trading.enums import (
    OPEN_STATUSES,
    Liquidity,
    OrderSide,
    OrderStatus,
    OrderType,
    TimeInForce,
)


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class OrderIntent(_Value):
    """An order as someone wants it, before any venue has seen it: what the risk engine emits and what
    a broker submits. Valid by construction for Alpaca crypto spot: exactly one of `qty` or `notional`
    (notional only for market orders), the prices its type needs and no others, at most 9 decimals.
    An invalid intent raises pydantic's ValidationError whose message says what is wrong in Alpaca's words.
    """

    symbol: str = Field(min_length=1, description="Pair as Alpaca writes it, e.g. BTC/USDT.")
    side: OrderSide
    type: OrderType = OrderType.MARKET
    time_in_force: TimeInForce = TimeInForce.GTC
    qty: float | None = Field(None, description="Base quantity; or give `notional`.")
    notional: float | None = Field(None, description="Quote amount to buy or sell (market orders).")
    limit_price: float | None = None
    stop_price: float | None = None
    client_order_id: str | None = Field(None, max_length=rules.CLIENT_ORDER_ID_MAX)

    @field_validator("side", "type", "time_in_force", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        # Alpaca accepts "BUY" and "buy" alike.
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _alpaca_crypto_rules(self) -> Self:
        if self.type not in rules.CRYPTO_ORDER_TYPES:
            raise ValueError(f"invalid order type for crypto order: {self.type.value}")
        if self.time_in_force not in rules.CRYPTO_TIMES_IN_FORCE:
            raise ValueError(f"invalid crypto time_in_force: {self.time_in_force.value}")
        if (self.qty is None) == (self.notional is None):
            raise ValueError("exactly one of qty or notional is required")
        if self.notional is not None and self.type != OrderType.MARKET:
            raise ValueError("notional is only supported for market orders")
        priced = (OrderType.LIMIT, OrderType.STOP_LIMIT)
        if self.type in priced and (self.limit_price is None or self.limit_price <= 0):
            raise ValueError("limit_price is required and must be > 0 for limit and stop_limit orders")
        if self.type == OrderType.STOP_LIMIT and (self.stop_price is None or self.stop_price <= 0):
            raise ValueError("stop_price is required and must be > 0 for stop_limit orders")
        if self.type == OrderType.MARKET and (self.limit_price is not None or self.stop_price is not None):
            raise ValueError("market orders take no limit_price or stop_price")
        if self.qty is not None:
            if self.qty <= 0:
                raise ValueError("qty must be > 0")
            if rules.decimal_places(repr(self.qty)) > rules.QTY_DECIMALS:
                raise ValueError(f"qty must have at most {rules.QTY_DECIMALS} decimal places")
        if self.notional is not None and self.notional <= 0:
            raise ValueError("notional must be > 0")
        return self


class Order(_Value):
    """An order as the venue keeps it (Alpaca's Order, the fields this project uses)."""

    id: str
    client_order_id: str
    symbol: str
    side: OrderSide
    type: OrderType
    time_in_force: TimeInForce
    qty: float | None = None
    notional: float | None = None
    limit_price: float | None = None
    stop_price: float | None = None
    status: OrderStatus
    created_at: AwareDatetime
    updated_at: AwareDatetime
    filled_qty: float = 0.0
    filled_avg_price: float | None = None
    filled_at: AwareDatetime | None = None
    canceled_at: AwareDatetime | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


class Fill(_Value):
    """One execution of an order."""

    execution_id: str
    order_id: str
    symbol: str
    side: OrderSide
    qty: float = Field(gt=0)
    price: float = Field(gt=0)
    fee: float = Field(ge=0, description="In the quote currency.")
    liquidity: Liquidity
    at: AwareDatetime

    @property
    def notional(self) -> float:
        return self.qty * self.price


class Position(_Value):
    """A long spot holding of one symbol (crypto spot cannot be short)."""

    symbol: str
    qty: float = Field(ge=0)
    avg_entry_price: float = Field(ge=0)

    @property
    def cost_basis(self) -> float:
        return self.qty * self.avg_entry_price

    def market_value(self, price: float) -> float:
        return self.qty * price

    def unrealized_pnl_pct(self, price: float) -> float | None:
        """Gain since entry at `price`, in %; None for an empty position."""
        if self.qty <= 0 or not self.avg_entry_price:
            return None
        return (price / self.avg_entry_price - 1) * 100


class Account(_Value):
    """Cash, equity (cash plus positions at their marks), positions and working orders at one moment."""

    cash: float
    equity: float
    positions: tuple[Position, ...] = ()
    open_orders: tuple[Order, ...] = ()

    def position(self, symbol: str) -> Position | None:
        """The holding of `symbol` ("BTC/USDT" or "BTCUSDT"), if any."""
        compact = symbol.replace("/", "")
        return next((p for p in self.positions if p.symbol.replace("/", "") == compact), None)

    def exposure_pct(self, symbol: str, price: float) -> float:
        """Share of equity held in `symbol` at `price`, in %."""
        position = self.position(symbol)
        if position is None or self.equity <= 0:
            return 0.0
        return position.market_value(price) / self.equity * 100

"""The order validator: turns an order request into an accepted order, or refuses it with Alpaca's
status and message. Every rule is Alpaca's crypto spot rule from `crypto_pipeline.trading.rules`;
this module only applies them, in the order Alpaca reports them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from crypto_pipeline.exchange.assets import AssetCatalog
from crypto_pipeline.exchange.book import BarView
from crypto_pipeline.exchange.ledger import PaperLedger
from crypto_pipeline.exchange.market import MarketData
from crypto_pipeline.exchange.request_models import OrderRequest
from crypto_pipeline.exchange.wire import AlpacaError, forbidden, unprocessable
from crypto_pipeline.trading import OrderSide, OrderType, TimeInForce
from crypto_pipeline.trading.rules import (
    CLIENT_ORDER_ID_MAX,
    CRYPTO_ORDER_TYPES,
    CRYPTO_TIMES_IN_FORCE,
    MIN_NOTIONAL,
    QTY_DECIMALS,
    FeeSchedule,
    SlippageModel,
    buy_reserve,
    decimal_places,
    floor_qty,
)


@dataclass(frozen=True)
class AcceptedOrder:
    """An order that passed every rule, with the bar it was checked against (it fills on arrival)."""

    symbol: str
    side: OrderSide
    type: OrderType
    time_in_force: TimeInForce
    qty: float | None
    notional: float | None
    limit_price: float | None
    stop_price: float | None
    client_order_id: str
    working_qty: float  # a notional order's quantity, fixed at the price it was checked at
    bar: BarView


class OrderValidator:
    def __init__(
        self,
        catalog: AssetCatalog,
        market: MarketData,
        ledger: PaperLedger,
        fees: FeeSchedule,
        slippage: SlippageModel,
    ) -> None:
        self.catalog = catalog
        self.market = market
        self.ledger = ledger
        self.fees = fees
        self.slippage = slippage

    def validate(self, request: OrderRequest, now_ns: int) -> AcceptedOrder:
        symbol = self._symbol(request.symbol)
        side, order_type, tif = self._kind(request)
        qty, notional = request.qty, request.notional
        limit_price, stop_price = request.limit_price, request.stop_price
        self._sizes(symbol, order_type, qty, notional, limit_price, stop_price)
        client_order_id = self._client_order_id(request.client_order_id)

        bar = self.market.last_bar(symbol, now_ns)
        if bar is None:
            raise forbidden(f"no market for {symbol} at the replay clock yet")
        _, quote = self.market.touch(symbol, bar, now_ns)
        reference = quote.ask_price if side == OrderSide.BUY else quote.bid_price
        working_qty = qty if qty is not None else floor_qty(notional / reference)  # type: ignore[operator]
        price_for_checks = limit_price if order_type != OrderType.MARKET else reference
        order_notional = notional if notional is not None else working_qty * price_for_checks  # type: ignore[operator]
        if order_notional < MIN_NOTIONAL:
            raise forbidden(f"cost basis must be >= minimal amount of order {MIN_NOTIONAL:g}")
        self._balance(symbol, side, order_type, working_qty, order_notional, now_ns)
        return AcceptedOrder(
            symbol,
            side,
            order_type,
            tif,
            qty,
            notional,
            limit_price,
            stop_price,
            client_order_id,
            working_qty,
            bar,
        )

    def _symbol(self, raw: str | None) -> str:
        if not raw:
            raise unprocessable("symbol is required")
        try:
            return self.catalog.resolve(raw)
        except AlpacaError:
            raise unprocessable(f'could not find asset "{raw}"') from None

    @staticmethod
    def _kind(request: OrderRequest) -> tuple[OrderSide, OrderType, TimeInForce]:
        if request.side not in (OrderSide.BUY, OrderSide.SELL):
            raise unprocessable("side must be buy or sell")
        if request.type not in CRYPTO_ORDER_TYPES:
            raise unprocessable(f"invalid order type for crypto order: {request.type or 'missing'}")
        if request.time_in_force not in CRYPTO_TIMES_IN_FORCE:
            raise unprocessable(f"invalid crypto time_in_force: {request.time_in_force or 'missing'}")
        return OrderSide(request.side), OrderType(request.type), TimeInForce(request.time_in_force)

    def _sizes(
        self,
        symbol: str,
        order_type: OrderType,
        qty: float | None,
        notional: float | None,
        limit_price: float | None,
        stop_price: float | None,
    ) -> None:
        if (qty is None) == (notional is None):
            raise unprocessable("exactly one of qty or notional is required")
        if notional is not None and order_type != OrderType.MARKET:
            raise unprocessable("notional is only supported for market orders")
        if order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) and (
            limit_price is None or limit_price <= 0
        ):
            raise unprocessable("limit_price is required and must be > 0 for limit and stop_limit orders")
        if order_type == OrderType.STOP_LIMIT and (stop_price is None or stop_price <= 0):
            raise unprocessable("stop_price is required and must be > 0 for stop_limit orders")
        if order_type == OrderType.MARKET and (limit_price is not None or stop_price is not None):
            raise unprocessable("market orders take no limit_price or stop_price")
        if qty is not None:
            if qty <= 0:
                raise unprocessable("qty must be > 0")
            if decimal_places(qty) > QTY_DECIMALS:
                raise unprocessable(f"qty must have at most {QTY_DECIMALS} decimal places")
            minimum = self.catalog.min_order_size(symbol)
            if qty < minimum:
                raise unprocessable(f"qty must be >= {minimum:g} (minimum order size of {symbol})")
        if notional is not None and notional <= 0:
            raise unprocessable("notional must be > 0")

    def _client_order_id(self, given: str | None) -> str:
        client_order_id = given or str(uuid.uuid4())
        if len(client_order_id) > CLIENT_ORDER_ID_MAX:
            raise unprocessable(f"client_order_id must be at most {CLIENT_ORDER_ID_MAX} characters")
        if self.ledger.has_client_order_id(client_order_id):
            raise unprocessable("client_order_id must be unique")
        return client_order_id

    def _balance(
        self,
        symbol: str,
        side: OrderSide,
        order_type: OrderType,
        working_qty: float,
        order_notional: float,
        now_ns: int,
    ) -> None:
        if side == OrderSide.BUY:
            needed = buy_reserve(order_notional, order_type, self.fees, self.slippage)
            available = self.ledger.buying_power(now_ns)
            if needed > available + 1e-9:
                raise forbidden(
                    f"insufficient balance for USD (requested: {needed:.2f}, available: {available:.2f})"
                )
            return
        held = self.ledger.sellable_qty(symbol)
        if working_qty > held + 1e-12:
            base = symbol.split("/")[0]
            raise forbidden(
                f"insufficient balance for {base} (requested: {working_qty:g}, available: {held:g})"
            )

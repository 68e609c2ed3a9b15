"""The order validator: turns an order request into an accepted order, or refuses it with Alpaca's
status and message. The rules are Alpaca's crypto spot rules, kept in `crypto_pipeline.trading`
(`OrderIntent` for an order's shape, `rules` for sizes, fees and slippage); this module only adds what
needs the venue's state: the asset, its minimum size, the price, the balance and unique client ids."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pydantic import ValidationError

from crypto_pipeline.exchange.assets import AssetCatalog
from crypto_pipeline.exchange.book import BarView
from crypto_pipeline.exchange.ledger import PaperLedger
from crypto_pipeline.exchange.market import MarketData
from crypto_pipeline.exchange.request_models import OrderRequest, refusal
from crypto_pipeline.exchange.wire import AlpacaError, forbidden, unprocessable
from crypto_pipeline.trading import OrderIntent, OrderSide, OrderType
from crypto_pipeline.trading.rules import MIN_NOTIONAL, FeeSchedule, SlippageModel, buy_reserve, floor_qty


@dataclass(frozen=True)
class AcceptedOrder:
    """An order that passed every rule, with the bar it was checked against (it fills on arrival)."""

    intent: OrderIntent  # symbol resolved, client_order_id chosen
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
        intent = self._intent(request)
        symbol, side = intent.symbol, intent.side
        if intent.qty is not None and intent.qty < (minimum := self.catalog.min_order_size(symbol)):
            raise unprocessable(f"qty must be >= {minimum:g} (minimum order size of {symbol})")
        if self.ledger.has_client_order_id(intent.client_order_id):  # type: ignore[arg-type]
            raise unprocessable("client_order_id must be unique")

        bar = self.market.last_bar(symbol, now_ns)
        if bar is None:
            raise forbidden(f"no market for {symbol} at the replay clock yet")
        _, quote = self.market.touch(symbol, bar, now_ns)
        reference = quote.ask_price if side == OrderSide.BUY else quote.bid_price
        working_qty = intent.qty if intent.qty is not None else floor_qty(intent.notional / reference)  # type: ignore[operator]
        price_for_checks = intent.limit_price if intent.type != OrderType.MARKET else reference
        order_notional = intent.notional if intent.notional is not None else working_qty * price_for_checks  # type: ignore[operator]
        if order_notional < MIN_NOTIONAL:
            raise forbidden(f"cost basis must be >= minimal amount of order {MIN_NOTIONAL:g}")
        self._balance(intent, working_qty, order_notional, now_ns)
        return AcceptedOrder(intent, working_qty, bar)

    def _intent(self, request: OrderRequest) -> OrderIntent:
        """The request as the trading model's OrderIntent, which holds Alpaca's rules for an order's
        shape (types, time in force, qty or notional, prices, decimals)."""
        if not request.symbol:
            raise unprocessable("symbol is required")
        try:
            symbol = self.catalog.resolve(request.symbol)
        except AlpacaError:
            raise unprocessable(f'could not find asset "{request.symbol}"') from None
        fields = request.model_dump(exclude_none=True)
        fields.update(symbol=symbol, client_order_id=request.client_order_id or str(uuid.uuid4()))
        try:
            return OrderIntent(**fields)
        except ValidationError as error:
            raise refusal(error.errors()) from None

    def _balance(self, intent: OrderIntent, working_qty: float, order_notional: float, now_ns: int) -> None:
        if intent.side == OrderSide.BUY:
            needed = buy_reserve(order_notional, intent.type, self.fees, self.slippage)
            available = self.ledger.buying_power(now_ns)
            if needed > available + 1e-9:
                raise forbidden(
                    f"insufficient balance for USD (requested: {needed:.2f}, available: {available:.2f})"
                )
            return
        held = self.ledger.sellable_qty(intent.symbol)
        if working_qty > held + 1e-12:
            base = intent.symbol.split("/")[0]
            raise forbidden(
                f"insufficient balance for {base} (requested: {working_qty:g}, available: {held:g})"
            )

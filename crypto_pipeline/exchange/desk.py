"""The paper trading desk of the local exchange: takes orders through the validator, books them in the
ledger, and fills them against the replay (on arrival against the touch, then bar by bar as the clock
moves). Named apart from any broker that trades for real: this one only simulates a venue."""

from __future__ import annotations

import uuid

from crypto_pipeline.exchange.assets import AssetCatalog, asset_id
from crypto_pipeline.exchange.book import BarView, bar_view
from crypto_pipeline.exchange.clock import ReplayClock
from crypto_pipeline.exchange.config import ExchangeConfig
from crypto_pipeline.exchange.ledger import PaperLedger, TradeUpdateSink
from crypto_pipeline.exchange.market import MarketData
from crypto_pipeline.exchange.matching import fill_against_bar, fill_against_quote, stop_triggered
from crypto_pipeline.exchange.records import AccountRecord, OrderRecord, PositionRecord
from crypto_pipeline.exchange.request_models import OrderRequest
from crypto_pipeline.exchange.store import ExchangeStore
from crypto_pipeline.exchange.validation import OrderValidator
from crypto_pipeline.exchange.wire import AlpacaError, not_found
from crypto_pipeline.trading import OrderSide, OrderStatus, OrderType, TimeInForce
from crypto_pipeline.trading.rules import FeeSchedule, SlippageModel, floor_qty


class PaperDesk:
    def __init__(
        self,
        config: ExchangeConfig,
        market: MarketData,
        clock: ReplayClock,
        store: ExchangeStore,
        publish: TradeUpdateSink,
    ) -> None:
        self.market = market
        self.clock = clock
        self.fees = FeeSchedule(config.maker_fee_bps, config.taker_fee_bps)
        self.slippage = SlippageModel(config.impact_coefficient, config.max_participation)
        self.catalog = AssetCatalog(market.store)
        self.ledger = PaperLedger(
            store, self.fees, self.slippage, publish, self._ask, config.initial_cash, clock.now_ns()
        )
        self.validator = OrderValidator(self.catalog, market, self.ledger, self.fees, self.slippage)

    # What the REST views read.
    @property
    def account(self) -> AccountRecord:
        return self.ledger.account

    @property
    def orders(self) -> dict[str, OrderRecord]:
        return self.ledger.orders

    @property
    def positions(self) -> dict[str, PositionRecord]:
        return self.ledger.positions

    def _ask(self, symbol: str, now_ns: int) -> float:
        bar = self.market.last_bar(symbol, now_ns)
        return self.market.touch(symbol, bar, now_ns)[1].ask_price if bar else 0.0

    def buying_power(self) -> float:
        return self.ledger.buying_power(self.clock.now_ns())

    def mark_price(self, symbol: str) -> float | None:
        return self.market.mark_price(symbol, self.clock.now_ns())

    # --- orders -----------------------------------------------------------------------------
    def submit(self, request: OrderRequest) -> OrderRecord:
        now = self.clock.now_ns()
        accepted = self.validator.validate(request, now)
        intent = accepted.intent
        order = OrderRecord(
            id=str(uuid.uuid4()),
            client_order_id=intent.client_order_id,  # type: ignore[arg-type]
            symbol=intent.symbol,
            asset_id=asset_id(intent.symbol),
            side=intent.side,
            type=intent.type,
            time_in_force=intent.time_in_force,
            qty=intent.qty,
            notional=intent.notional,
            limit_price=intent.limit_price,
            stop_price=intent.stop_price,
            status=OrderStatus.NEW,
            created_at_ns=now,
            updated_at_ns=now,
            next_bar_open_ns=now,
            working_qty=accepted.working_qty,
        )
        self.ledger.add(order)
        self._fill_on_arrival(order, accepted.bar, now)
        return order

    def _fill_on_arrival(self, order: OrderRecord, bar: BarView, now: int) -> None:
        if order.type == OrderType.STOP_LIMIT:
            last = self.market.last_price(order.symbol, bar, now)
            armed = last >= order.stop_price if order.side == OrderSide.BUY else last <= order.stop_price  # type: ignore[operator]
            if not armed:
                return self._expire_ioc(order, now)
            order.stop_triggered = True
        limit = order.limit_price if order.type != OrderType.MARKET else None
        _, quote = self.market.touch(order.symbol, bar, now)
        fill = fill_against_quote(order.side, order.remaining_qty, limit, quote, bar, self.slippage)
        if fill is not None:
            self.ledger.apply_fill(order, fill, now)
        self._expire_ioc(order, now)

    def _expire_ioc(self, order: OrderRecord, now: int) -> None:
        if order.time_in_force == TimeInForce.IOC and order.is_open:
            self.ledger.cancel(order, now)

    def on_clock(self, now_ns: int) -> None:
        """Let working orders meet the bars completed since they were last looked at."""
        for order in self.ledger.open_orders():
            bars = self.market.store.finest(order.symbol)
            if bars is None:
                continue
            first = bars.index_at_or_after(order.next_bar_open_ns)
            last = bars.known_count(now_ns)
            for index in range(first, last):
                if not order.is_open:
                    break
                self._work_against_bar(order, bar_view(order.symbol, bars, index))
            if last > first and order.is_open:
                order.next_bar_open_ns = int(bars.ts[last - 1]) + 1
                self.ledger.save_progress(order)

    def _work_against_bar(self, order: OrderRecord, bar: BarView) -> None:
        if order.type == OrderType.STOP_LIMIT and not order.stop_triggered:
            if stop_triggered(order.side, order.stop_price, bar):  # type: ignore[arg-type]
                order.stop_triggered = True
                order.updated_at_ns = bar.known_ns
            return  # an armed stop works as a limit from the next bar on
        limit = order.limit_price if order.type != OrderType.MARKET else None
        half_spread = self.market.spread.spread_fraction(bar) / 2
        fill = fill_against_bar(order.side, order.remaining_qty, limit, half_spread, bar, self.slippage)
        if fill is not None:
            self.ledger.apply_fill(order, fill, bar.known_ns)

    def cancel(self, order_id: str) -> None:
        order = self.ledger.get_order(order_id)
        if not order.is_open:
            raise AlpacaError(422, 42210000, f'order is already in "{order.status.value}" state')
        self.ledger.cancel(order, self.clock.now_ns())

    def cancel_all(self) -> list[OrderRecord]:
        now = self.clock.now_ns()
        canceled = self.ledger.open_orders()
        for order in canceled:
            self.ledger.cancel(order, now)
        return canceled

    # --- positions ----------------------------------------------------------------------------
    def get_position(self, raw_symbol: str) -> PositionRecord:
        try:
            symbol = self.catalog.resolve(raw_symbol)
        except AlpacaError:
            raise not_found("position does not exist") from None
        position = self.positions.get(symbol)
        if position is None or position.qty <= 0:
            raise not_found("position does not exist")
        return position

    def close_position(
        self, raw_symbol: str, qty: float | None = None, percentage: float | None = None
    ) -> OrderRecord:
        """A market sell of all of a position, `qty` of it, or `percentage` (0, 100] of it."""
        position = self.get_position(raw_symbol)
        if percentage is not None:
            qty = floor_qty(position.qty * percentage / 100)
        qty = position.qty if qty is None else qty
        return self.submit(
            OrderRequest(symbol=position.symbol, qty=qty, side="sell", type="market", time_in_force="gtc")
        )

    def close_all(self, cancel_orders: bool) -> list[tuple[str, int, OrderRecord | AlpacaError]]:
        if cancel_orders:
            self.cancel_all()
        results: list[tuple[str, int, OrderRecord | AlpacaError]] = []
        for symbol in sorted(self.positions):
            try:
                results.append((symbol, 200, self.close_position(symbol)))
            except AlpacaError as error:
                results.append((symbol, error.status, error))
        return results

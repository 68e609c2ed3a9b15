"""The paper broker: validates orders with Alpaca's spot rules, fills them against the replay, keeps
cash and positions, persists every change and publishes trade updates."""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Callable

from crypto_pipeline.exchange.bars import SymbolBars
from crypto_pipeline.exchange.book import BarView, bar_view
from crypto_pipeline.exchange.clock import ReplayClock
from crypto_pipeline.exchange.config import ExchangeConfig
from crypto_pipeline.exchange.market import MarketData
from crypto_pipeline.exchange.matching import Match, fill_against_bar, fill_against_quote, stop_triggered
from crypto_pipeline.exchange.records import AccountRecord, FillRecord, OrderRecord, PositionRecord
from crypto_pipeline.exchange.store import ExchangeStore
from crypto_pipeline.exchange.wire import AlpacaError, forbidden, not_found, unprocessable
from crypto_pipeline.trading import OrderStatus
from crypto_pipeline.trading.rules import (
    CLIENT_ORDER_ID_MAX,
    CRYPTO_ORDER_TYPES,
    CRYPTO_TIMES_IN_FORCE,
    MIN_NOTIONAL,
    QTY_DECIMALS,
    FeeSchedule,
    SlippageModel,
    add_qty,
    decimal_places,
    floor_qty,
    min_order_size,
)

ASSET_NAMESPACE = uuid.UUID("5b0c7a3e-8f1d-4c39-9a57-2f1e6d0b9c11")
# Alpaca's crypto rules live in crypto_pipeline.trading.rules (one copy for exchange, backtest and risk).
ORDER_TYPES = CRYPTO_ORDER_TYPES
TIMES_IN_FORCE = CRYPTO_TIMES_IN_FORCE

TradeUpdateSink = Callable[[str, OrderRecord, int, Match | None, str | None], None]


def asset_id(symbol: str) -> str:
    return str(uuid.uuid5(ASSET_NAMESPACE, symbol))


def _number(body: dict[str, object], field: str) -> float | None:
    value = body.get(field)
    if value is None or value == "":
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise unprocessable(f"invalid {field}: {value!r}") from None
    if not math.isfinite(number):
        raise unprocessable(f"invalid {field}: {value!r}")
    return number


class Broker:
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
        self.store = store
        self.publish = publish
        self.fees = FeeSchedule(config.maker_fee_bps, config.taker_fee_bps)
        self.slippage = SlippageModel(config.impact_coefficient, config.max_participation)
        self._by_compact = {s.replace("/", ""): s for s in market.symbols()}
        self._min_sizes: dict[str, float] = {}
        account = store.load_account()
        if account is None:
            account = AccountRecord(
                id=str(uuid.uuid4()),
                account_number=f"PA{uuid.uuid4().int % 10**10:010d}",
                cash=config.initial_cash,
                created_at_ns=clock.now_ns(),
            )
            store.save(account=account)
        self.account = account
        self.orders: dict[str, OrderRecord] = {o.id: o for o in store.load_orders()}
        self.by_client_id = {o.client_order_id: o for o in self.orders.values()}
        self.positions = {p.symbol: p for p in store.load_positions()}

    # --- assets -----------------------------------------------------------------------------
    def resolve_symbol(self, raw: str) -> str:
        symbol = raw.strip().upper()
        if "/" not in symbol:
            symbol = self._by_compact.get(symbol, symbol)
        if symbol not in self._by_compact.values():
            for candidate in self._by_compact.values():
                if asset_id(candidate) == raw.strip():
                    return candidate
            raise not_found(f"asset not found for {raw}")
        return symbol

    def min_order_size(self, symbol: str) -> float:
        """About a dollar's worth at the first recorded price, as a power of ten (Alpaca lists one per asset)."""
        if symbol not in self._min_sizes:
            store = self.market.store
            bars: SymbolBars | None = next(
                (store.bars(tf, symbol) for tf in reversed(store.timeframes) if symbol in store.symbols(tf)),
                None,
            )
            price = float(bars.close[0]) if bars is not None and len(bars.close) else 1.0
            self._min_sizes[symbol] = min_order_size(price)
        return self._min_sizes[symbol]

    def asset_wire(self, symbol: str) -> dict[str, object]:
        return {
            "id": asset_id(symbol),
            "class": "crypto",
            "exchange": "CRYPTO",
            "symbol": symbol,
            "name": f"{symbol.split('/')[0]} / {symbol.split('/')[-1]}",
            "status": "active",
            "tradable": True,
            "marginable": False,
            "maintenance_margin_requirement": 100,
            "shortable": False,
            "easy_to_borrow": False,
            "fractionable": True,
            "attributes": [],
            "min_order_size": str(self.min_order_size(symbol)),
            "min_trade_increment": f"{10**-QTY_DECIMALS:.9f}",
            "price_increment": "0.000000001",
        }

    # --- orders -----------------------------------------------------------------------------
    def submit(self, body: dict[str, object]) -> OrderRecord:
        now = self.clock.now_ns()
        raw_symbol = str(body.get("symbol") or "")
        if not raw_symbol:
            raise unprocessable("symbol is required")
        try:
            symbol = self.resolve_symbol(raw_symbol)
        except AlpacaError:
            raise unprocessable(f'could not find asset "{raw_symbol}"') from None
        side = str(body.get("side") or "").lower()
        if side not in ("buy", "sell"):
            raise unprocessable("side must be buy or sell")
        order_type = str(body.get("type") or body.get("order_type") or "").lower()
        if order_type not in ORDER_TYPES:
            raise unprocessable(f"invalid order type for crypto order: {order_type or 'missing'}")
        tif = str(body.get("time_in_force") or "").lower()
        if tif not in TIMES_IN_FORCE:
            raise unprocessable(f"invalid crypto time_in_force: {tif or 'missing'}")
        qty, notional = _number(body, "qty"), _number(body, "notional")
        if (qty is None) == (notional is None):
            raise unprocessable("exactly one of qty or notional is required")
        if notional is not None and order_type != "market":
            raise unprocessable("notional is only supported for market orders")
        limit_price, stop_price = _number(body, "limit_price"), _number(body, "stop_price")
        if order_type in ("limit", "stop_limit") and (limit_price is None or limit_price <= 0):
            raise unprocessable("limit_price is required and must be > 0 for limit and stop_limit orders")
        if order_type == "stop_limit" and (stop_price is None or stop_price <= 0):
            raise unprocessable("stop_price is required and must be > 0 for stop_limit orders")
        if order_type == "market" and (limit_price is not None or stop_price is not None):
            raise unprocessable("market orders take no limit_price or stop_price")
        if qty is not None:
            if qty <= 0:
                raise unprocessable("qty must be > 0")
            if decimal_places(body.get("qty")) > QTY_DECIMALS:
                raise unprocessable(f"qty must have at most {QTY_DECIMALS} decimal places")
            if qty < self.min_order_size(symbol):
                raise unprocessable(
                    f"qty must be >= {self.min_order_size(symbol):g} (minimum order size of {symbol})"
                )
        if notional is not None and notional <= 0:
            raise unprocessable("notional must be > 0")
        client_order_id = str(body.get("client_order_id") or uuid.uuid4())
        if len(client_order_id) > CLIENT_ORDER_ID_MAX:
            raise unprocessable(f"client_order_id must be at most {CLIENT_ORDER_ID_MAX} characters")
        if client_order_id in self.by_client_id:
            raise unprocessable("client_order_id must be unique")

        bar = self.market.last_bar(symbol, now)
        if bar is None:
            raise forbidden(f"no market for {symbol} at the replay clock yet")
        _, quote = self.market.touch(symbol, bar, now)
        reference = quote.ask_price if side == "buy" else quote.bid_price
        working_qty = qty if qty is not None else floor_qty(notional / reference)  # type: ignore[operator]
        price_for_checks = limit_price if order_type != "market" else reference
        order_notional = notional if notional is not None else working_qty * price_for_checks  # type: ignore[operator]
        if order_notional < MIN_NOTIONAL:
            raise forbidden(f"cost basis must be >= minimal amount of order {MIN_NOTIONAL:g}")
        if side == "buy":
            needed = order_notional * self._market_buffer(order_type) * (1 + self.fees.worst_rate)
            available = self.buying_power()
            if needed > available + 1e-9:
                raise forbidden(
                    f"insufficient balance for USD (requested: {needed:.2f}, available: {available:.2f})"
                )
        else:
            held = self.sellable_qty(symbol)
            if working_qty > held + 1e-12:
                base = symbol.split("/")[0]
                raise forbidden(
                    f"insufficient balance for {base} (requested: {working_qty:g}, available: {held:g})"
                )

        order = OrderRecord(
            id=str(uuid.uuid4()),
            client_order_id=client_order_id,
            symbol=symbol,
            asset_id=asset_id(symbol),
            side=side,
            type=order_type,
            time_in_force=tif,
            qty=qty,
            notional=notional,
            limit_price=limit_price,
            stop_price=stop_price,
            status=OrderStatus.NEW,
            created_at_ns=now,
            updated_at_ns=now,
            next_bar_open_ns=now,
            working_qty=working_qty,
        )
        self.orders[order.id] = order
        self.by_client_id[client_order_id] = order
        self.store.save(orders=[order])
        self.publish("new", order, now, None, None)
        self._fill_on_arrival(order, bar, now)
        return order

    def _fill_on_arrival(self, order: OrderRecord, bar: BarView, now: int) -> None:
        if order.type == "stop_limit":
            last = self.market.last_price(order.symbol, bar, now)
            armed = last >= order.stop_price if order.side == "buy" else last <= order.stop_price  # type: ignore[operator]
            if not armed:
                return self._expire_ioc(order, now)
            order.stop_triggered = True
        limit = order.limit_price if order.type != "market" else None
        _, quote = self.market.touch(order.symbol, bar, now)
        fill = fill_against_quote(order.side, order.remaining_qty, limit, quote, bar, self.slippage)
        if fill is not None:
            self._apply_fill(order, fill, now)
        self._expire_ioc(order, now)

    def _expire_ioc(self, order: OrderRecord, now: int) -> None:
        if order.time_in_force == "ioc" and order.is_open:
            self._cancel(order, now)

    def on_clock(self, now_ns: int) -> None:
        """Let working orders meet the bars completed since they were last looked at."""
        for order in [o for o in self.orders.values() if o.is_open]:
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
                self.store.save(orders=[order])

    def _work_against_bar(self, order: OrderRecord, bar: BarView) -> None:
        if order.type == "stop_limit" and not order.stop_triggered:
            if stop_triggered(order.side, order.stop_price, bar):  # type: ignore[arg-type]
                order.stop_triggered = True
                order.updated_at_ns = bar.known_ns
            return  # an armed stop works as a limit from the next bar on
        limit = order.limit_price if order.type != "market" else None
        half_spread = self.market.spread.spread_fraction(bar) / 2
        fill = fill_against_bar(order.side, order.remaining_qty, limit, half_spread, bar, self.slippage)
        if fill is not None:
            self._apply_fill(order, fill, bar.known_ns)

    def _apply_fill(self, order: OrderRecord, fill: Match, now: int) -> None:
        qty = floor_qty(fill.qty)
        short_of_cash = False
        if order.side == "buy":
            # The price may have run up since submission: never buy more than the cash pays for.
            affordable = floor_qty(max(0.0, self.account.cash) / (fill.price * (1 + self.fees.worst_rate)))
            if qty > affordable:
                qty, short_of_cash = affordable, True
                fill = dataclasses.replace(fill, qty=qty)
        if qty <= 0:
            if short_of_cash:
                self._cancel(order, now)
            return
        notional = qty * fill.price
        fee = self.fees.fee(notional, fill.liquidity)
        position = self.positions.setdefault(order.symbol, PositionRecord(order.symbol, order.asset_id))
        if order.side == "buy":
            self.account.cash -= notional + fee
            position.qty = add_qty(position.qty, qty)
            position.cost_basis += notional
        else:
            self.account.cash += notional - fee
            cost_share = position.cost_basis * (qty / position.qty) if position.qty else 0.0
            position.qty = add_qty(position.qty, -qty)
            position.cost_basis = max(0.0, position.cost_basis - cost_share) if position.qty > 0 else 0.0
        previous = order.filled_qty
        order.filled_qty = add_qty(previous, qty)
        order.filled_avg_price = (
            (order.filled_avg_price or 0.0) * previous + fill.price * qty
        ) / order.filled_qty
        order.fees_paid += fee
        order.updated_at_ns = now
        complete = order.remaining_qty < 10**-QTY_DECIMALS
        order.status = OrderStatus.FILLED if complete else OrderStatus.PARTIALLY_FILLED
        if complete:
            order.filled_at_ns = now
        record = FillRecord(
            str(uuid.uuid4()), order.id, order.symbol, order.side, qty, fill.price, fee, fill.liquidity, now
        )
        self.store.save(account=self.account, orders=[order], fills=[record], positions=[position])
        if position.qty <= 0:
            self.positions.pop(order.symbol, None)
        self.publish("fill" if complete else "partial_fill", order, now, fill, record.execution_id)
        if short_of_cash and order.is_open:
            self._cancel(order, now)  # the rest cannot be paid for: cancel it rather than leave it hanging

    def _cancel(self, order: OrderRecord, now: int) -> None:
        order.status = OrderStatus.CANCELED
        order.canceled_at_ns = now
        order.updated_at_ns = now
        self.store.save(orders=[order])
        self.publish("canceled", order, now, None, None)

    def get_order(self, order_id: str) -> OrderRecord:
        order = self.orders.get(order_id)
        if order is None:
            raise not_found("order not found")
        return order

    def get_by_client_id(self, client_order_id: str) -> OrderRecord:
        order = self.by_client_id.get(client_order_id)
        if order is None:
            raise not_found("order not found")
        return order

    def cancel(self, order_id: str) -> None:
        order = self.get_order(order_id)
        if not order.is_open:
            raise AlpacaError(422, 42210000, f'order is already in "{order.status.value}" state')
        self._cancel(order, self.clock.now_ns())

    def cancel_all(self) -> list[OrderRecord]:
        now = self.clock.now_ns()
        canceled = [o for o in self.orders.values() if o.is_open]
        for order in canceled:
            self._cancel(order, now)
        return canceled

    # --- account and positions ----------------------------------------------------------------
    def reserved_cash(self) -> float:
        reserved = 0.0
        for order in self.orders.values():
            if order.is_open and order.side == "buy":
                price = order.limit_price
                if price is None:
                    now = self.clock.now_ns()
                    bar = self.market.last_bar(order.symbol, now)
                    price = self.market.touch(order.symbol, bar, now)[1].ask_price if bar else 0.0
                price *= self._market_buffer(order.type)
                reserved += order.remaining_qty * price * (1 + self.fees.worst_rate)
        return reserved

    def _market_buffer(self, order_type: str) -> float:
        """A market buy can pay up to the largest impact one fill has (at max participation): reserve it,
        so that buying power checked at submission still covers the fill and cash never goes negative."""
        if order_type != "market":
            return 1.0
        return self.slippage.worst_impact_factor

    def buying_power(self) -> float:
        return max(0.0, self.account.cash - self.reserved_cash())

    def sellable_qty(self, symbol: str) -> float:
        position = self.positions.get(symbol)
        held = position.qty if position else 0.0
        pending = sum(
            o.remaining_qty
            for o in self.orders.values()
            if o.is_open and o.side == "sell" and o.symbol == symbol
        )
        return max(0.0, add_qty(held, -pending))

    def mark_price(self, symbol: str) -> float | None:
        return self.market.mark_price(symbol, self.clock.now_ns())

    def get_position(self, raw_symbol: str) -> PositionRecord:
        try:
            symbol = self.resolve_symbol(raw_symbol)
        except AlpacaError:
            raise not_found("position does not exist") from None
        position = self.positions.get(symbol)
        if position is None or position.qty <= 0:
            raise not_found("position does not exist")
        return position

    def close_position(
        self, raw_symbol: str, qty: float | None = None, percentage: float | None = None
    ) -> OrderRecord:
        position = self.get_position(raw_symbol)
        if percentage is not None:
            if not 0 < percentage <= 100:
                raise unprocessable("percentage must be in (0, 100]")
            qty = floor_qty(position.qty * percentage / 100)
        qty = position.qty if qty is None else qty
        return self.submit(
            {"symbol": position.symbol, "qty": qty, "side": "sell", "type": "market", "time_in_force": "gtc"}
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

"""The paper ledger: the account's cash, positions, orders and fills. Every change is saved to the
exchange store before it is announced as a trade update, so a restart finds what clients were told."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable

from crypto_pipeline.exchange.matching import Match
from crypto_pipeline.exchange.records import AccountRecord, FillRecord, OrderRecord, PositionRecord
from crypto_pipeline.exchange.store import ExchangeStore
from crypto_pipeline.exchange.wire import not_found
from crypto_pipeline.trading import OrderSide, OrderStatus
from crypto_pipeline.trading.rules import (
    QTY_INCREMENT,
    FeeSchedule,
    SlippageModel,
    add_qty,
    buy_reserve,
    floor_qty,
)

# (event, order, at ns, the match of a fill, its execution id): what a trade update is made of.
TradeUpdateSink = Callable[[str, OrderRecord, int, Match | None, str | None], None]
# The ask a resting market buy is reserved at: (symbol, now ns) -> price.
AskPrice = Callable[[str, int], float]


class PaperLedger:
    def __init__(
        self,
        store: ExchangeStore,
        fees: FeeSchedule,
        slippage: SlippageModel,
        publish: TradeUpdateSink,
        ask_price: AskPrice,
        initial_cash: float,
        now_ns: int,
    ) -> None:
        self.store = store
        self.fees = fees
        self.slippage = slippage
        self.publish = publish
        self.ask_price = ask_price
        account = store.load_account()
        if account is None:
            account = AccountRecord(
                id=str(uuid.uuid4()),
                account_number=f"PA{uuid.uuid4().int % 10**10:010d}",
                cash=initial_cash,
                created_at_ns=now_ns,
            )
            store.save(account=account)
        self.account = account
        self.orders: dict[str, OrderRecord] = {o.id: o for o in store.load_orders()}
        self.by_client_id = {o.client_order_id: o for o in self.orders.values()}
        self.positions = {p.symbol: p for p in store.load_positions()}

    # --- orders -----------------------------------------------------------------------------
    def add(self, order: OrderRecord) -> None:
        self.orders[order.id] = order
        self.by_client_id[order.client_order_id] = order
        self.store.save(orders=[order])
        self.publish("new", order, order.created_at_ns, None, None)

    def has_client_order_id(self, client_order_id: str) -> bool:
        return client_order_id in self.by_client_id

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

    def open_orders(self) -> list[OrderRecord]:
        return [o for o in self.orders.values() if o.is_open]

    def save_progress(self, order: OrderRecord) -> None:
        """An order's matching state moved on (no fill): keep it for a restart."""
        self.store.save(orders=[order])

    def cancel(self, order: OrderRecord, now_ns: int) -> None:
        order.status = OrderStatus.CANCELED
        order.canceled_at_ns = now_ns
        order.updated_at_ns = now_ns
        self.store.save(orders=[order])
        self.publish("canceled", order, now_ns, None, None)

    # --- fills ----------------------------------------------------------------------------------
    def apply_fill(self, order: OrderRecord, fill: Match, now_ns: int) -> None:
        qty = floor_qty(fill.qty)
        short_of_cash = False
        if order.side == OrderSide.BUY:
            # The price may have run up since submission: never buy more than the cash pays for.
            affordable = floor_qty(max(0.0, self.account.cash) / (fill.price * (1 + self.fees.worst_rate)))
            if qty > affordable:
                qty, short_of_cash = affordable, True
                fill = dataclasses.replace(fill, qty=qty)
        if qty <= 0:
            if short_of_cash:
                self.cancel(order, now_ns)
            return
        notional = qty * fill.price
        fee = self.fees.fee(notional, fill.liquidity)
        position = self.positions.setdefault(order.symbol, PositionRecord(order.symbol, order.asset_id))
        if order.side == OrderSide.BUY:
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
        order.updated_at_ns = now_ns
        complete = order.remaining_qty < QTY_INCREMENT
        order.status = OrderStatus.FILLED if complete else OrderStatus.PARTIALLY_FILLED
        if complete:
            order.filled_at_ns = now_ns
        record = FillRecord(
            str(uuid.uuid4()),
            order.id,
            order.symbol,
            order.side,
            qty,
            fill.price,
            fee,
            fill.liquidity,
            now_ns,
        )
        self.store.save(account=self.account, orders=[order], fills=[record], positions=[position])
        if position.qty <= 0:
            self.positions.pop(order.symbol, None)
        self.publish("fill" if complete else "partial_fill", order, now_ns, fill, record.execution_id)
        if short_of_cash and order.is_open:
            self.cancel(order, now_ns)  # the rest cannot be paid for: cancel it rather than leave it hanging

    # --- balances ---------------------------------------------------------------------------
    def reserved_cash(self, now_ns: int) -> float:
        """Cash set aside for open buys: at the limit, or for a market buy at the current ask."""
        reserved = 0.0
        for order in self.orders.values():
            if order.is_open and order.side == OrderSide.BUY:
                price = (
                    order.limit_price
                    if order.limit_price is not None
                    else self.ask_price(order.symbol, now_ns)
                )
                reserved += buy_reserve(order.remaining_qty * price, order.type, self.fees, self.slippage)
        return reserved

    def buying_power(self, now_ns: int) -> float:
        return max(0.0, self.account.cash - self.reserved_cash(now_ns))

    def sellable_qty(self, symbol: str) -> float:
        """Held, less what open sells already promise."""
        position = self.positions.get(symbol)
        held = position.qty if position else 0.0
        pending = sum(
            o.remaining_qty for o in self.open_orders() if o.side == OrderSide.SELL and o.symbol == symbol
        )
        return max(0.0, add_qty(held, -pending))

"""The trading API's wire shapes (Asset, Order, Position, Account, TradeUpdate) rendered from our records."""

from __future__ import annotations

from crypto_pipeline.exchange.assets import AssetCatalog, asset_id
from crypto_pipeline.exchange.desk import PaperDesk
from crypto_pipeline.exchange.matching import Match
from crypto_pipeline.exchange.records import OrderRecord, PositionRecord
from crypto_pipeline.exchange.wire import decimal_str, rfc3339


def _time(ns: int | None) -> str | None:
    return None if ns is None else rfc3339(ns)


def asset_wire(catalog: AssetCatalog, symbol: str) -> dict[str, object]:
    base, quote = symbol.split("/")[0], symbol.split("/")[-1]
    return {
        "id": asset_id(symbol),
        "class": "crypto",
        "exchange": "CRYPTO",
        "symbol": symbol,
        "name": f"{base} / {quote}",
        "status": "active",
        "tradable": True,
        "marginable": False,
        "maintenance_margin_requirement": 100,
        "shortable": False,
        "easy_to_borrow": False,
        "fractionable": True,
        "attributes": [],
        "min_order_size": str(catalog.min_order_size(symbol)),
        "min_trade_increment": f"{catalog.min_trade_increment(symbol):.9f}",
        "price_increment": f"{catalog.price_increment(symbol):.9f}",
    }


def order_wire(order: OrderRecord) -> dict[str, object]:
    return {
        "id": order.id,
        "client_order_id": order.client_order_id,
        "created_at": rfc3339(order.created_at_ns),
        "updated_at": rfc3339(order.updated_at_ns),
        "submitted_at": rfc3339(order.created_at_ns),
        "filled_at": _time(order.filled_at_ns),
        "expired_at": None,
        "expires_at": None,
        "canceled_at": _time(order.canceled_at_ns),
        "failed_at": None,
        "replaced_at": None,
        "replaced_by": None,
        "replaces": None,
        "asset_id": order.asset_id,
        "symbol": order.symbol,
        "asset_class": "crypto",
        "notional": decimal_str(order.notional),
        "qty": decimal_str(order.qty),
        "filled_qty": decimal_str(order.filled_qty),
        "filled_avg_price": decimal_str(order.filled_avg_price),
        "order_class": "simple",
        "order_type": order.type,
        "type": order.type,
        "side": order.side,
        "position_intent": "buy_to_open" if order.side == "buy" else "sell_to_close",
        "time_in_force": order.time_in_force,
        "limit_price": decimal_str(order.limit_price),
        "stop_price": decimal_str(order.stop_price),
        "status": order.status,
        "extended_hours": False,
        "legs": None,
        "trail_percent": None,
        "trail_price": None,
        "hwm": None,
        "subtag": None,
        "source": None,
    }


def position_wire(position: PositionRecord, price: float | None) -> dict[str, object]:
    price = position.avg_entry_price if price is None else price
    market_value = position.qty * price
    unrealized = market_value - position.cost_basis
    return {
        "asset_id": position.asset_id,
        "symbol": position.symbol.replace("/", ""),
        "exchange": "CRYPTO",
        "asset_class": "crypto",
        "asset_marginable": False,
        "avg_entry_price": decimal_str(position.avg_entry_price),
        "qty": decimal_str(position.qty),
        "qty_available": decimal_str(position.qty),
        "side": "long",
        "market_value": decimal_str(market_value),
        "cost_basis": decimal_str(position.cost_basis),
        "unrealized_pl": decimal_str(unrealized),
        "unrealized_plpc": decimal_str(unrealized / position.cost_basis if position.cost_basis else 0.0),
        "unrealized_intraday_pl": decimal_str(unrealized),
        "unrealized_intraday_plpc": decimal_str(
            unrealized / position.cost_basis if position.cost_basis else 0.0
        ),
        "current_price": decimal_str(price),
        "lastday_price": decimal_str(price),
        "change_today": "0",
    }


def account_wire(broker: PaperDesk) -> dict[str, object]:
    account = broker.account
    long_value = sum(
        p.qty * (broker.mark_price(p.symbol) or p.avg_entry_price) for p in broker.positions.values()
    )
    equity = account.cash + long_value
    buying_power = broker.buying_power()
    return {
        "id": account.id,
        "account_number": account.account_number,
        "status": "ACTIVE",
        "crypto_status": "ACTIVE",
        "currency": "USD",
        "cash": decimal_str(account.cash, 2),
        "buying_power": decimal_str(buying_power, 2),
        "regt_buying_power": decimal_str(buying_power, 2),
        "daytrading_buying_power": "0",
        "non_marginable_buying_power": decimal_str(buying_power, 2),
        "effective_buying_power": decimal_str(buying_power, 2),
        "options_buying_power": "0",
        "accrued_fees": "0",
        "pending_transfer_in": "0",
        "pending_transfer_out": "0",
        "portfolio_value": decimal_str(equity, 2),
        "equity": decimal_str(equity, 2),
        "last_equity": decimal_str(equity, 2),
        "long_market_value": decimal_str(long_value, 2),
        "short_market_value": "0",
        "position_market_value": decimal_str(long_value, 2),
        "initial_margin": "0",
        "maintenance_margin": "0",
        "last_maintenance_margin": "0",
        "sma": "0",
        "multiplier": "1",
        "shorting_enabled": False,
        "pattern_day_trader": False,
        "trading_blocked": False,
        "transfers_blocked": False,
        "account_blocked": False,
        "trade_suspended_by_user": False,
        "daytrade_count": 0,
        "created_at": rfc3339(account.created_at_ns),
        "balance_asof": rfc3339(broker.clock.now_ns())[:10],
        "crypto_tier": 1,
    }


def trade_update_wire(
    event: str,
    order: OrderRecord,
    at_ns: int,
    fill: Match | None,
    execution_id: str | None,
    position_qty: float,
) -> dict[str, object]:
    data: dict[str, object] = {"event": event, "timestamp": rfc3339(at_ns), "order": order_wire(order)}
    if fill is not None:
        data.update(
            execution_id=execution_id,
            price=decimal_str(fill.price),
            qty=decimal_str(fill.qty),
            position_qty=decimal_str(position_qty),
        )
    return {"stream": "trade_updates", "data": data}

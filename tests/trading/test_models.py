"""The trading model: alpaca-py's enums, intents valid by construction, and the prompt's portfolio view."""

from __future__ import annotations

from datetime import UTC, datetime

import alpaca.trading.enums as alpaca_enums
import pytest
from pydantic import ValidationError

from crypto_pipeline.state import Portfolio
from crypto_pipeline.trading import (
    Account,
    Fill,
    Liquidity,
    Order,
    OrderIntent,
    OrderSide,
    OrderStatus,
    OrderType,
    Position,
    TimeInForce,
)

AT = datetime(2024, 6, 1, 12, tzinfo=UTC)


def message(**fields: object) -> str:
    with pytest.raises(ValidationError) as error:
        OrderIntent(**{"symbol": "BTC/USDT", "side": "buy", **fields})
    return str(error.value.errors()[0]["ctx"]["error"])


def test_the_enums_are_alpaca_pys_own_so_its_requests_take_them_unchanged() -> None:
    assert OrderSide is alpaca_enums.OrderSide and OrderType is alpaca_enums.OrderType
    assert TimeInForce is alpaca_enums.TimeInForce and OrderStatus is alpaca_enums.OrderStatus


def test_an_intent_defaults_to_a_gtc_market_order_and_reads_alpacas_spelling() -> None:
    intent = OrderIntent(symbol="BTC/USDT", side="BUY", qty=0.123456789)
    assert (intent.side, intent.type, intent.time_in_force) == (
        OrderSide.BUY,
        OrderType.MARKET,
        TimeInForce.GTC,
    )
    limit = OrderIntent(
        symbol="ETH/USDT", side="sell", type="Limit", time_in_force="ioc", qty=1, limit_price=3000
    )
    assert limit.type is OrderType.LIMIT and limit.time_in_force is TimeInForce.IOC


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"qty": 1, "type": "stop", "stop_price": 1.0}, "invalid order type for crypto order: stop"),
        ({"qty": 1, "time_in_force": "day"}, "invalid crypto time_in_force: day"),
        ({}, "exactly one of qty or notional is required"),
        ({"qty": 1, "notional": 10}, "exactly one of qty or notional is required"),
        ({"notional": 10, "type": "limit", "limit_price": 5}, "notional is only supported for market orders"),
        (
            {"qty": 1, "type": "limit"},
            "limit_price is required and must be > 0 for limit and stop_limit orders",
        ),
        (
            {"qty": 1, "type": "stop_limit", "limit_price": 5},
            "stop_price is required and must be > 0 for stop_limit orders",
        ),
        ({"qty": 1, "limit_price": 5}, "market orders take no limit_price or stop_price"),
        ({"qty": 0}, "qty must be > 0"),
        ({"qty": 0.0123456789}, "qty must have at most 9 decimal places"),
        ({"notional": -1}, "notional must be > 0"),
    ],
)
def test_an_intent_alpaca_would_refuse_cannot_be_built(fields: dict[str, object], expected: str) -> None:
    assert message(**fields) == expected


def test_non_finite_numbers_unknown_sides_and_long_client_ids_are_refused() -> None:
    for fields in (
        {"qty": float("nan")},
        {"qty": "inf"},
        {"qty": 1, "side": "short"},
        {"qty": 1, "client_order_id": "x" * 129},
    ):
        with pytest.raises(ValidationError):
            OrderIntent(**{"symbol": "BTC/USDT", "side": "buy", **fields})


def test_values_are_frozen() -> None:
    intent = OrderIntent(symbol="BTC/USDT", side="buy", qty=1)
    with pytest.raises(ValidationError):
        intent.qty = 2  # type: ignore[misc]


def test_orders_fills_and_accounts_carry_the_venues_facts() -> None:
    order = Order(
        id="o1",
        client_order_id="c1",
        symbol="BTC/USDT",
        side="buy",
        type="limit",
        time_in_force="gtc",
        qty=0.5,
        limit_price=60_000.0,
        status="partially_filled",
        created_at=AT,
        updated_at=AT,
        filled_qty=0.2,
    )
    assert order.is_open and not order.model_copy(update={"status": OrderStatus.FILLED}).is_open
    fill = Fill(
        execution_id="e1",
        order_id="o1",
        symbol="BTC/USDT",
        side="buy",
        qty=0.2,
        price=60_000.0,
        fee=18.0,
        liquidity="maker",
        at=AT,
    )
    assert fill.liquidity is Liquidity.MAKER and fill.notional == pytest.approx(12_000.0)
    with pytest.raises(ValidationError):  # times are UTC-aware, never naive
        Fill.model_validate({**fill.model_dump(), "at": datetime(2024, 6, 1)})
    position = Position(symbol="BTC/USDT", qty=0.2, avg_entry_price=60_000.0)
    account = Account(cash=88_000.0, equity=100_000.0, positions=(position,), open_orders=(order,))
    assert account.position("BTCUSDT") == position and account.position("ETH/USDT") is None
    assert account.exposure_pct("BTC/USDT", 66_000.0) == pytest.approx(13.2)
    assert position.unrealized_pnl_pct(66_000.0) == pytest.approx(10.0)


def test_the_prompts_portfolio_is_a_view_of_the_account() -> None:
    position = Position(symbol="BTC/USDT", qty=0.05, avg_entry_price=66_000.0)
    account = Account(cash=6_700.0, equity=10_000.0, positions=(position,))
    view = Portfolio.from_account(account, "BTC/USDT")
    assert view == Portfolio(position_qty=0.05, avg_entry_price=66_000.0, cash=6_700.0, equity=10_000.0)
    assert view.unrealized_pnl_pct(72_600.0) == pytest.approx(position.unrealized_pnl_pct(72_600.0))
    flat = Portfolio.from_account(account, "ETH/USDT")
    assert (flat.position_qty, flat.avg_entry_price, flat.equity) == (0.0, None, 10_000.0)

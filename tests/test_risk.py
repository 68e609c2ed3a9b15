"""The risk engine: unit cases for each rule and hypothesis properties over arbitrary sequences."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto_pipeline.llm.decision import Action, TradeDecision
from crypto_pipeline.risk import RiskConfig, RiskEngine
from crypto_pipeline.trading import Account, OrderSide, Position

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")


def decision(
    action: Action, symbol: str = "BTC/USDT", confidence: float = 90, size: float = 50
) -> TradeDecision:
    return TradeDecision(action=action, confidence=confidence, position_size_pct=size, symbol=symbol, at=T0)


def cash_account(cash: float = 10_000.0) -> Account:
    return Account(cash=cash, equity=cash)


def test_buy_is_sized_from_size_and_confidence_and_capped_per_symbol() -> None:
    engine = RiskEngine(RiskConfig(max_symbol_exposure_pct=25))
    small = engine.evaluate(decision(Action.BUY, size=10, confidence=60), cash_account(), 100.0, now=T0)
    assert small.intent is not None and small.intent.qty == pytest.approx(10_000 * 0.10 * 0.60 / 100)
    big = engine.evaluate(decision(Action.BUY, "ETH/USDT", size=100), cash_account(), 100.0, now=T0)
    assert big.intent is not None and big.intent.qty * 100 <= 2_500 + 1e-6


def test_hold_size_is_never_read_and_every_rejection_says_why() -> None:
    engine = RiskEngine()
    hold = TradeDecision(action=Action.HOLD, confidence=99, position_size_pct=100, symbol="BTC/USDT")
    result = engine.evaluate(hold, cash_account(), 100.0, now=T0)
    assert result.intent is None and result.reason == "hold"
    assert engine.evaluate(decision(Action.SELL), cash_account(), 100.0, now=T0).reason.startswith(
        "nothing held"
    )
    low = engine.evaluate(decision(Action.BUY, confidence=10), cash_account(), 100.0, now=T0)
    assert "confidence" in low.reason
    stale = engine.evaluate(decision(Action.BUY), cash_account(), 100.0, now=T0, data_age=timedelta(hours=5))
    assert "stale" in stale.reason


def test_cooldown_and_orders_per_hour() -> None:
    engine = RiskEngine(RiskConfig(cooldown=timedelta(minutes=30), max_orders_per_hour=2))
    assert engine.evaluate(decision(Action.BUY, "BTC/USDT"), cash_account(), 100.0, now=T0).approved
    again = engine.evaluate(
        decision(Action.BUY, "BTC/USDT"), cash_account(), 100.0, now=T0 + timedelta(minutes=5)
    )
    assert "cooldown" in again.reason
    assert engine.evaluate(decision(Action.BUY, "ETH/USDT"), cash_account(), 100.0, now=T0).approved
    third = engine.evaluate(decision(Action.BUY, "SOL/USDT"), cash_account(), 100.0, now=T0)
    assert "orders in the last hour" in third.reason
    assert engine.evaluate(
        decision(Action.BUY, "SOL/USDT"), cash_account(), 100.0, now=T0 + timedelta(hours=1)
    ).approved


def test_correlated_symbols_count_as_one_bet() -> None:
    engine = RiskEngine(RiskConfig(max_correlated_exposure_pct=30, max_symbol_exposure_pct=25))
    moves = [0.01, -0.02, 0.015, -0.005, 0.02, -0.01] * 5
    returns = {"BTC/USDT": moves, "ETH/USDT": [m * 1.1 for m in moves]}
    held = Account(
        cash=7_500, equity=10_000, positions=(Position(symbol="BTC/USDT", qty=25, avg_entry_price=100),)
    )
    result = engine.evaluate(decision(Action.BUY, "ETH/USDT", size=100), held, 100.0, now=T0, returns=returns)
    assert result.intent is not None and result.intent.qty * 100 <= 500 + 1e-6  # 30% - 25% already in BTC


def test_daily_breaker_blocks_entries_until_the_next_utc_day_and_kill_switch_closes_everything() -> None:
    engine = RiskEngine(RiskConfig(daily_loss_limit_pct=5, max_drawdown_pct=10))
    engine.update(cash_account(10_000), {}, T0)
    engine.update(cash_account(9_400), {}, T0 + timedelta(hours=1))
    assert (
        "circuit breaker" in engine.evaluate(decision(Action.BUY), cash_account(9_400), 100.0, now=T0).reason
    )
    next_day = T0 + timedelta(days=1)
    engine.update(cash_account(9_400), {}, next_day)
    assert engine.evaluate(decision(Action.BUY), cash_account(9_400), 100.0, now=next_day).approved
    holding = Account(
        cash=4_000, equity=8_900, positions=(Position(symbol="BTC/USDT", qty=49, avg_entry_price=100),)
    )
    closing = engine.update(holding, {"BTC/USDT": 100.0}, next_day + timedelta(hours=2))
    assert [(i.symbol, i.side, i.qty) for i in closing] == [("BTC/USDT", OrderSide.SELL, 49)]
    blocked = engine.evaluate(decision(Action.SELL), holding, 100.0, now=next_day + timedelta(days=3))
    assert "kill switch" in blocked.reason
    engine.reset_kill_switch()
    assert not engine.killed


step = st.tuples(
    st.sampled_from([Action.BUY, Action.SELL, Action.HOLD]),
    st.sampled_from(SYMBOLS),
    st.floats(0, 100),  # confidence
    st.floats(0, 100),  # size
    st.floats(0.5, 2.0),  # price move factor since the last step
    st.integers(0, 240),  # minutes since the last step
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(step, min_size=1, max_size=40),
    config=st.builds(
        RiskConfig,
        max_symbol_exposure_pct=st.floats(5, 100),
        max_total_exposure_pct=st.floats(5, 100),
        min_confidence=st.floats(0, 90),
        cooldown=st.timedeltas(timedelta(0), timedelta(hours=2)),
        max_open_positions=st.integers(1, 3),
        daily_loss_limit_pct=st.floats(1, 30),
        max_drawdown_pct=st.floats(1, 50),
    ),
)
def test_whatever_happens_limits_hold_nothing_goes_short_and_breakers_block_entries(
    steps: list[tuple[Action, str, float, float, float, int]], config: RiskConfig
) -> None:
    engine = RiskEngine(config)
    cash, qty = 10_000.0, dict.fromkeys(SYMBOLS, 0.0)
    price = dict.fromkeys(SYMBOLS, 100.0)
    fee = 0.0025
    now = T0
    for action, symbol, confidence, size, move, minutes in steps:
        now += timedelta(minutes=minutes)
        price[symbol] *= move
        positions = tuple(Position(symbol=s, qty=q, avg_entry_price=100) for s, q in qty.items() if q > 0)
        account = Account(
            cash=cash, equity=cash + sum(q * price[s] for s, q in qty.items()), positions=positions
        )
        killed_before = engine.killed
        for intent in engine.update(account, price, now):
            assert intent.side == OrderSide.SELL and intent.qty <= qty[intent.symbol]
            cash += intent.qty * price[intent.symbol] * (1 - fee)
            qty[intent.symbol] -= intent.qty
        positions = tuple(Position(symbol=s, qty=q, avg_entry_price=100) for s, q in qty.items() if q > 0)
        account = Account(
            cash=cash, equity=cash + sum(q * price[s] for s, q in qty.items()), positions=positions
        )
        blocked_entries = engine.killed or engine.daily_breaker
        result = engine.evaluate(
            TradeDecision(
                action=action, confidence=confidence, position_size_pct=size, symbol=symbol, at=now
            ),
            account,
            price[symbol],
            now=now,
            prices=price,
        )
        if result.intent is None:
            assert result.reason  # every rejection carries its reason
            continue
        intent = result.intent
        assert action is not Action.HOLD
        assert not killed_before and not engine.killed
        notional = intent.qty * price[symbol]
        if intent.side == OrderSide.BUY:
            assert not blocked_entries, "a breaker tripped, yet a new entry was approved"
            assert notional * (1 + fee) <= cash + 1e-6
            cash -= notional * (1 + fee)
            qty[symbol] += intent.qty
            equity = account.equity
            assert qty[symbol] * price[symbol] <= equity * config.max_symbol_exposure_pct / 100 + 1e-6
            invested = sum(q * price[s] for s, q in qty.items())
            assert invested <= equity * config.max_total_exposure_pct / 100 + 1e-6
            assert sum(1 for q in qty.values() if q > 0) <= config.max_open_positions
        else:
            assert intent.qty <= qty[symbol] + 1e-12  # never sells more than is held
            cash += notional * (1 - fee)
            qty[symbol] -= intent.qty
        assert all(q >= -1e-12 for q in qty.values()) and cash >= -1e-6


def test_positions_named_as_the_venue_names_them_count_against_the_caps() -> None:
    # Alpaca (and the local exchange) report positions as BTCUSDT; decisions and prices say BTC/USDT.
    # The live loop's account carries the venue's names: the caps must see through the difference.
    engine = RiskEngine(RiskConfig(max_symbol_exposure_pct=25, max_correlated_exposure_pct=30))
    held = Account(
        cash=7_600.0, equity=10_000.0, positions=(Position(symbol="BTCUSDT", qty=20, avg_entry_price=100),)
    )
    # 20 BTC marked at 120 = 2,400 of the 2,500 allowed: the engine buys at most $100 more.
    more = engine.evaluate(decision(Action.BUY, size=50), held, 120.0, now=T0, prices={"BTC/USDT": 120.0})
    assert more.intent is not None and more.intent.qty * 120 <= 100 + 1e-6
    # ETH moving with BTC: one bet, capped at 30% together with the BTC already held.
    returns = {
        "BTC/USDT": [0.01, -0.02, 0.015, 0.03, -0.01],
        "ETH/USDT": [0.011, -0.019, 0.016, 0.029, -0.011],
    }
    eth = engine.evaluate(
        decision(Action.BUY, "ETH/USDT", size=50),
        held,
        50.0,
        now=T0,
        prices={"BTC/USDT": 120.0},
        returns=returns,
    )
    assert eth.intent is not None and eth.intent.qty * 50 <= 3_000 - 2_400 + 1e-6


def test_a_wide_or_unknown_live_spread_refuses_opening_but_never_closing() -> None:
    engine = RiskEngine(RiskConfig(max_spread_bps=10))
    wide = engine.evaluate(decision(Action.BUY), cash_account(), 100.0, now=T0, spread_bps=25.0)
    assert wide.intent is None and wide.reason == "spread 25.0 bps > max 10 bps"
    unknown = engine.evaluate(decision(Action.BUY), cash_account(), 100.0, now=T0, spread_bps=float("nan"))
    assert unknown.intent is None and unknown.reason == "spread unknown: no fresh order book"
    # No book at all (a backtest) leaves the rule out; a narrow spread passes it.
    assert engine.evaluate(decision(Action.BUY), cash_account(), 100.0, now=T0).approved
    assert engine.evaluate(
        decision(Action.BUY, "ETH/USDT"), cash_account(), 100.0, now=T0, spread_bps=9.9
    ).approved
    held = Account(
        cash=5_000.0,
        equity=10_000.0,
        positions=[Position(symbol="SOL/USDT", qty=50.0, avg_entry_price=100.0)],
    )
    sell = engine.evaluate(decision(Action.SELL, "SOL/USDT"), held, 100.0, now=T0, spread_bps=500.0)
    assert sell.intent is not None and sell.intent.side is OrderSide.SELL
    # Off by default: the same wide spread opens.
    assert (
        RiskEngine().evaluate(decision(Action.BUY), cash_account(), 100.0, now=T0, spread_bps=500.0).approved
    )

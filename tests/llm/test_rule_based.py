"""RuleBased: deterministic EMA/RSI rules on the 1h indicators."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crypto_pipeline.llm.decision import Action
from crypto_pipeline.llm.provider import DecisionProvider
from crypto_pipeline.llm.rule_based import RuleBased
from crypto_pipeline.state import MarketState, Portfolio, TimeframeIndicators

FLAT = Portfolio(cash=10_000.0, equity=10_000.0)
LONG = Portfolio(position_qty=0.05, avg_entry_price=60_000.0, cash=6_000.0, equity=10_000.0)


def _state(
    rsi: float | None,
    ema_spread: float | None,
    above_50: float | None = 1.0,
    portfolio: Portfolio | None = FLAT,
    atr: float | None = 0.5,
) -> MarketState:
    at = datetime(2024, 6, 1, 12, tzinfo=UTC)
    one_hour = TimeframeIndicators(
        bar_close=at, rsi_14=rsi, ema_9_vs_21_pct=ema_spread, close_vs_ema_50_pct=above_50, atr_pct=atr
    )
    return MarketState(
        symbol="BTC/USDT", at=at, price=67_000.0, timeframes={"1h": one_hour}, portfolio=portfolio
    )


def test_is_a_decision_provider() -> None:
    assert isinstance(RuleBased(), DecisionProvider)


def test_uptrend_with_healthy_rsi_buys_with_atr_stops() -> None:
    [d] = RuleBased().decide([_state(rsi=58, ema_spread=0.3)])
    assert d.valid and d.action is Action.BUY
    assert d.position_size_pct == 20
    assert d.stop_loss_pct == pytest.approx(1.0) and d.take_profit_pct == pytest.approx(2.0)
    assert d.symbol == "BTC/USDT" and d.model_version == "ema-rsi-v1"


@pytest.mark.parametrize(
    ("rsi", "spread", "above_50"),
    [(75, 0.3, 1.0), (45, 0.3, 1.0), (58, -0.1, 1.0), (58, 0.3, -0.5)],
    ids=["overbought", "weak-rsi", "downtrend", "below-ema50"],
)
def test_no_buy_without_every_condition(rsi: float, spread: float, above_50: float) -> None:
    [d] = RuleBased().decide([_state(rsi=rsi, ema_spread=spread, above_50=above_50)])
    assert d.action is Action.HOLD and d.valid


def test_holding_sells_when_trend_turns_and_sizes_to_the_position() -> None:
    [d] = RuleBased().decide([_state(rsi=45, ema_spread=-0.2, portfolio=LONG)])
    assert d.action is Action.SELL
    assert d.position_size_pct == pytest.approx(LONG.exposure_pct(67_000.0))


def test_holding_sells_when_rsi_is_extreme() -> None:
    [d] = RuleBased().decide([_state(rsi=82, ema_spread=0.5, portfolio=LONG)])
    assert d.action is Action.SELL and "overbought" in d.reasoning


def test_flat_account_never_sells() -> None:
    [d] = RuleBased().decide([_state(rsi=30, ema_spread=-0.5, portfolio=FLAT)])
    assert d.action is Action.HOLD


def test_missing_indicators_hold_and_say_why() -> None:
    decisions = RuleBased().decide([_state(rsi=None, ema_spread=0.3), _state(rsi=55, ema_spread=None)])
    assert all(d.action is Action.HOLD and d.valid and "warmed up" in d.reasoning for d in decisions)


def test_same_state_same_decision() -> None:
    state = MarketState.example()
    a, b = RuleBased().decide([state, state])
    assert a.model_dump(exclude={"latency_ms"}) == b.model_dump(exclude={"latency_ms"})


def test_a_broken_state_yields_invalid_holds_not_an_exception() -> None:
    class Broken:
        symbol = "BTC/USDT"
        at = datetime(2024, 6, 1, tzinfo=UTC)
        timeframes = None  # .get() will fail

    decisions = RuleBased().decide([Broken()])  # type: ignore[list-item]
    assert decisions[0].action is Action.HOLD and not decisions[0].valid
    assert "rule-based failed" in decisions[0].error

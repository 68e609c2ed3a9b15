"""Deterministic EMA/RSI rules on the 1h timeframe: the baseline every model must beat, and the
fallback when an LLM is down. Reads only indicators known at `state.at`, so it cannot look ahead."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crypto_pipeline.llm.decision import STOP_LOSS_RANGE, TAKE_PROFIT_RANGE, Action, TradeDecision
from crypto_pipeline.llm.provider import failed_decisions, state_meta

if TYPE_CHECKING:
    from crypto_pipeline.state import MarketState

RULES_VERSION = "ema-rsi-v1"


@dataclass(frozen=True)
class RuleBased:
    """Trend-following with an RSI filter.

    BUY when flat, EMA9 is above EMA21, price is above EMA50 and RSI is in [rsi_buy_min, rsi_overbought).
    SELL when holding and the trend turns (EMA9 below EMA21) or RSI reaches rsi_exit.
    Everything else, including indicators not yet warmed up, is HOLD.
    """

    timeframe: str = "1h"
    rsi_buy_min: float = 50.0
    rsi_overbought: float = 70.0
    rsi_exit: float = 78.0
    position_size_pct: float = 20.0
    stop_atr_multiple: float = 2.0
    take_profit_atr_multiple: float = 4.0
    name: str = "rule-based"

    def decide(self, states: list[MarketState]) -> list[TradeDecision]:
        try:
            return [self._decide_one(state) for state in states]
        except Exception as exc:  # noqa: BLE001 - a malformed state must not stop the trading loop
            return failed_decisions(
                states, f"rule-based failed: {type(exc).__name__}: {exc}", provider=self.name
            )

    def _decide_one(self, state: MarketState) -> TradeDecision:
        started = time.perf_counter()
        action, confidence, reason = self._rule(state)
        ind = state.timeframes.get(self.timeframe)
        atr = ind.atr_pct if ind is not None else None
        size = 0.0
        stop = take = None
        if action is Action.BUY:
            size = self.position_size_pct
            if atr:
                stop = _clip(self.stop_atr_multiple * atr, STOP_LOSS_RANGE)
                take = _clip(self.take_profit_atr_multiple * atr, TAKE_PROFIT_RANGE)
        elif action is Action.SELL:
            # Sell the whole long: the risk engine caps the order at what is held.
            held = state.portfolio.exposure_pct(state.price) if state.portfolio else 100.0
            size = min(100.0, max(held, 0.0))
        return TradeDecision(
            action=action,
            confidence=confidence,
            position_size_pct=size,
            stop_loss_pct=stop,
            take_profit_pct=take,
            reasoning=reason,
            provider=self.name,
            model_id=self.name,
            model_version=RULES_VERSION,
            latency_ms=(time.perf_counter() - started) * 1e3,
            prompt_tokens=0,
            completion_tokens=0,
            cost_usd=0.0,
            **state_meta(state),
        )

    def _rule(self, state: MarketState) -> tuple[Action, float, str]:
        ind = state.timeframes.get(self.timeframe)
        if ind is None or ind.rsi_14 is None or ind.ema_9_vs_21_pct is None:
            return Action.HOLD, 0.0, f"{self.timeframe} indicators not warmed up"
        rsi, trend = ind.rsi_14, ind.ema_9_vs_21_pct
        above_ema50 = ind.close_vs_ema_50_pct is None or ind.close_vs_ema_50_pct > 0
        # Unknown portfolio: assume we may hold, so exits are still signalled (the risk engine caps them).
        holding = state.portfolio is None or state.portfolio.position_qty > 0
        flat = state.portfolio is None or state.portfolio.position_qty <= 0

        if holding and (trend < 0 or rsi >= self.rsi_exit):
            why = "EMA9 crossed below EMA21" if trend < 0 else f"RSI {rsi:.0f} overbought"
            return Action.SELL, _confidence(abs(trend), rsi, exit_=True), why
        if flat and trend > 0 and above_ema50 and self.rsi_buy_min <= rsi < self.rsi_overbought:
            return Action.BUY, _confidence(trend, rsi, exit_=False), f"uptrend EMA9>EMA21, RSI {rsi:.0f}"
        return Action.HOLD, 50.0, f"no signal (RSI {rsi:.0f}, EMA9/21 {trend:+.2f}%)"


def _confidence(trend_strength_pct: float, rsi: float, exit_: bool) -> float:
    """50 at a bare signal, rising with the EMA spread (0.5% spread -> +25) and RSI distance from 50."""
    bonus = min(25.0, trend_strength_pct * 50) + min(20.0, abs(rsi - 50) / 2)
    return round(min(95.0, 50.0 + bonus), 1)


def _clip(value: float, bounds: tuple[float, float]) -> float:
    return round(min(max(value, bounds[0]), bounds[1]), 2)

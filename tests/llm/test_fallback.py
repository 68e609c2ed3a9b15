"""Fallback: the rule-based baseline stands in when the LLM is down, never when it answered badly."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from crypto_pipeline.llm.decision import Action, TradeDecision, parse_decision
from crypto_pipeline.llm.fallback import Fallback
from crypto_pipeline.llm.local import LocalLLM
from crypto_pipeline.llm.openai_compat import OpenAICompatible
from crypto_pipeline.llm.provider import DecisionProvider, failed_decisions, state_meta
from crypto_pipeline.llm.rule_based import RULES_VERSION, RuleBased
from crypto_pipeline.state import MarketState, Portfolio, TimeframeIndicators


def _buy_state(symbol: str = "BTC/USDT") -> MarketState:
    """A state on which the rules BUY: flat account, 1h uptrend, healthy RSI, above EMA50."""
    at = datetime(2024, 6, 1, 12, tzinfo=UTC)
    one_hour = TimeframeIndicators(
        bar_close=at, rsi_14=58.0, ema_9_vs_21_pct=0.3, close_vs_ema_50_pct=1.0, atr_pct=0.5
    )
    return MarketState(
        symbol=symbol,
        at=at,
        price=67_000.0,
        timeframes={"1h": one_hour},
        portfolio=Portfolio(cash=10_000.0, equity=10_000.0),
    )


@dataclass
class Scripted:
    """A member whose answer per symbol is set by the test: model text, "down", or "raise"."""

    name: str
    answers: dict[str, str]

    def decide(self, states: list[MarketState]) -> list[TradeDecision]:
        if any(self.answers[s.symbol] == "raise" for s in states):
            raise RuntimeError("CUDA out of memory")
        out = []
        for s in states:
            answer = self.answers[s.symbol]
            if answer == "down":
                out.extend(failed_decisions([s], "timeout after 30s", provider=self.name))
            else:
                out.append(
                    parse_decision(answer).with_meta(raw_text=answer, provider=self.name, **state_meta(s))
                )
        return out


def test_is_a_decision_provider() -> None:
    assert isinstance(Fallback(RuleBased(), RuleBased(name="other")), DecisionProvider)


def test_a_model_that_cannot_load_falls_back_to_the_rules(tmp_path: Path) -> None:
    primary = LocalLLM(tmp_path / "no-such-model", name="local:gone")
    [d] = Fallback(primary, RuleBased()).decide([_buy_state()])
    assert d.valid and d.action is Action.BUY and d.position_size_pct == 20
    # Provenance says who really decided, and why the LLM did not.
    assert (d.provider, d.model_version) == ("rule-based", RULES_VERSION)
    assert d.reasoning.startswith("fallback, local:gone down (model failed to load")
    assert "uptrend" in d.reasoning


def test_an_unreachable_endpoint_falls_back_to_the_rules() -> None:
    primary = OpenAICompatible("http://127.0.0.1:9", "m", timeout_s=0.5, max_attempts=1)
    [d] = Fallback(primary, RuleBased()).decide([_buy_state()])
    assert d.valid and d.action is Action.BUY and "endpoint unavailable" in d.reasoning


def test_only_the_states_the_primary_missed_fall_back_and_order_is_kept() -> None:
    answered = '{"action": "SELL", "confidence": 70, "position_size_pct": 50}'
    primary = Scripted("llm", {"BTC/USDT": answered, "ETH/USDT": "down", "SOL/USDT": answered})
    states = [_buy_state(s) for s in ("BTC/USDT", "ETH/USDT", "SOL/USDT")]
    decisions = Fallback(primary, RuleBased()).decide(states)
    assert [d.symbol for d in decisions] == ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
    assert [d.action for d in decisions] == [Action.SELL, Action.BUY, Action.SELL]
    assert [d.provider for d in decisions] == ["llm", "rule-based", "llm"]


def test_an_answer_that_fails_the_parser_stays_an_invalid_hold() -> None:
    """The backup stands in for a missing model; it never overrules one that answered."""
    primary = Scripted("llm", {"BTC/USDT": "I would buy here"})
    [d] = Fallback(primary, RuleBased()).decide([_buy_state()])
    assert not d.valid and d.action is Action.HOLD and d.provider == "llm"
    assert d.raw_text == "I would buy here"


def test_a_primary_that_raises_falls_back() -> None:
    [d] = Fallback(Scripted("llm", {"BTC/USDT": "raise"}), RuleBased()).decide([_buy_state()])
    assert d.valid and d.action is Action.BUY and "RuntimeError: CUDA out of memory" in d.reasoning


def test_both_down_is_an_invalid_hold_with_the_primarys_reason() -> None:
    both_down = Fallback(Scripted("llm", {"BTC/USDT": "down"}), Scripted("backup", {"BTC/USDT": "raise"}))
    [d] = both_down.decide([_buy_state()])
    assert not d.valid and d.action is Action.HOLD and d.error == "timeout after 30s"

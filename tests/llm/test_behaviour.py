"""`DecisionProfile`: what a model's decisions look like as a whole, and when they are degenerate."""

from __future__ import annotations

import math

import pytest

from crypto_pipeline.llm.behaviour import DecisionProfile, normalize_reasoning
from crypto_pipeline.llm.decision import TradeDecision, parse_decision

# What the registered challenger answered, every time.
STUCK = '{"action": "HOLD", "confidence": 100, "reasoning": "Upside edge: 50:50:50:50:50:50"}'


def _varied(n: int) -> list[TradeDecision]:
    """A model that answers: actions in turn, a sentence naming what it saw each time."""
    actions = ["BUY", "SELL", "HOLD"]
    return [
        parse_decision(
            f'{{"action": "{actions[i % 3]}", "confidence": {40 + i % 50}, "position_size_pct": 5, '
            f'"reasoning": "RSI {30 + i} with MACD {"up" if i % 2 else "down"}"}}'
        )
        for i in range(n)
    ]


def test_a_model_that_always_holds_with_one_sentence_is_degenerate_and_says_why() -> None:
    stuck = [parse_decision(STUCK) for _ in range(178)]
    assert all(d.valid for d in stuck)  # a 100% valid-output rate hides it
    profile = DecisionProfile.of(stuck)
    assert profile.n == 178 and profile.shares == {"BUY": 0.0, "SELL": 0.0, "HOLD": 1.0}
    assert profile.mean_confidence == 100.0 and profile.invalid_rate == 0.0
    assert profile.top_reasoning_share == 1.0 and profile.distinct_reasoning_share == pytest.approx(1 / 178)
    assert profile.degenerate_reasons() == [
        "answered HOLD to 178 of 178 decisions (100%)",
        "one reasoning sentence for 100% of decisions ('Upside edge: 50:50:50:50:50:50')",
    ]


def test_a_model_that_answers_is_not_degenerate() -> None:
    profile = DecisionProfile.of(_varied(60))
    assert profile.shares == pytest.approx({"BUY": 1 / 3, "SELL": 1 / 3, "HOLD": 1 / 3})
    assert profile.distinct_reasoning_share == 1.0 and profile.top_reasoning_share == pytest.approx(1 / 60)
    assert profile.degenerate_reasons() == []


def test_one_sentence_is_caught_even_with_varied_actions_and_normalized_text() -> None:
    # 19 of 20 say the same sentence, written with other case, spaces and a full stop: the same sentence.
    texts = ["Trend is up", "trend  is UP.", " Trend is up! "] * 6 + ["Trend is up", "RSI 71 overbought"]
    profile = DecisionProfile.from_columns(["BUY", "SELL"] * 10, [60.0] * 20, texts)
    assert normalize_reasoning("trend  is UP.") == normalize_reasoning("Trend is up") == "trend is up"
    assert profile.top_reasoning_share == pytest.approx(0.95) and profile.distinct_reasoning_share == 0.1
    assert profile.degenerate_reasons() == ["one reasoning sentence for 95% of decisions ('Trend is up')"]
    # Thresholds are the caller's: at 0.96 the same decisions pass.
    assert profile.degenerate_reasons(max_top_reasoning_share=0.96) == []


def test_too_few_decisions_say_nothing() -> None:
    few = DecisionProfile.of([parse_decision(STUCK)] * 19)
    assert few.degenerate_reasons() == []
    assert few.degenerate_reasons(min_decisions=19)  # the same decisions, once enough to tell
    empty = DecisionProfile.of([])
    assert empty.n == 0 and empty.degenerate_reasons(min_decisions=0) == []
    assert empty.as_metrics() == dict.fromkeys(empty.as_metrics(), 0.0)


def test_columns_give_the_same_profile_as_decisions_and_count_invalid_answers() -> None:
    decisions = [*_varied(9), parse_decision("no json at all"), parse_decision(STUCK)]
    assert not decisions[9].valid
    profile = DecisionProfile.of(decisions)
    same = DecisionProfile.from_columns(
        [d.action.value for d in decisions],
        [d.confidence for d in decisions],
        [d.reasoning for d in decisions],
        valid=[d.valid for d in decisions],
    )
    assert same == profile
    assert profile.invalid_rate == pytest.approx(1 / 11) and profile.shares["HOLD"] == pytest.approx(5 / 11)
    # Journal rows may lack a confidence or a reasoning: left out of the mean, an empty sentence.
    rows = DecisionProfile.from_columns(["hold", "BUY"], [None, 80.0], [None, "x"])
    assert rows.mean_confidence == 80.0 and rows.distinct_reasoning_share == 1.0 and rows.invalid_rate == 0.0
    with pytest.raises(ValueError, match="unknown action"):
        DecisionProfile.from_columns(["SHORT"], [1.0], [""])
    with pytest.raises(ValueError, match="unequal length"):
        DecisionProfile.from_columns(["BUY", "HOLD"], [1.0], ["", ""])


def test_metrics_have_fixed_names() -> None:
    metrics = DecisionProfile.of(_varied(6)).as_metrics("val_")
    assert list(metrics) == [
        "val_share_buy",
        "val_share_sell",
        "val_share_hold",
        "val_mean_confidence",
        "val_distinct_reasoning_share",
        "val_top_reasoning_share",
    ]
    assert metrics["val_share_buy"] == pytest.approx(1 / 3) and metrics["val_mean_confidence"] == 42.5


def test_pooled_parts_keep_exact_shares_and_bound_the_reasoning_in_the_models_favour() -> None:
    first = [parse_decision(STUCK)] * 30  # one fold: always the same sentence
    second = _varied(10)
    exact = DecisionProfile.of(first + second)
    pooled = DecisionProfile.pooled([DecisionProfile.of(first), DecisionProfile.of(second)])
    assert pooled.n == 40 and pooled.shares == pytest.approx(exact.shares)
    assert pooled.mean_confidence == pytest.approx(exact.mean_confidence)
    assert pooled.top_reasoning_share <= exact.top_reasoning_share == 0.75
    assert pooled.distinct_reasoning_share >= exact.distinct_reasoning_share
    assert DecisionProfile.pooled([DecisionProfile.of(second)]) == DecisionProfile.of(second)
    unknown = DecisionProfile(10, {"BUY": 0, "SELL": 0, "HOLD": 1.0}, 50.0, math.nan, math.nan, 0.0)
    assert math.isnan(DecisionProfile.pooled([unknown, DecisionProfile.of(second)]).top_reasoning_share)
    assert "distinct reasoning n/a" in unknown.describe()

"""parse_decision: tolerant of form, strict on content, never raises; malformed text is only ever HOLD."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from crypto_pipeline.llm.decision import (
    CONFIDENCE_RANGE,
    POSITION_SIZE_RANGE,
    STOP_LOSS_RANGE,
    TAKE_PROFIT_RANGE,
    Action,
    TradeDecision,
    parse_decision,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID = {
    "action": "BUY",
    "confidence": 72,
    "position_size_pct": 15,
    "stop_loss_pct": 2.5,
    "take_profit_pct": 6,
    "reasoning": "uptrend on 1h and 4h",
}


def _assert_invalid_hold(decision: TradeDecision) -> None:
    assert decision.action is Action.HOLD
    assert decision.valid is False
    assert decision.error
    assert decision.position_size_pct == 0


def _assert_content_in_range(decision: TradeDecision) -> None:
    assert CONFIDENCE_RANGE[0] <= decision.confidence <= CONFIDENCE_RANGE[1]
    assert POSITION_SIZE_RANGE[0] <= decision.position_size_pct <= POSITION_SIZE_RANGE[1]
    if decision.stop_loss_pct is not None:
        assert STOP_LOSS_RANGE[0] <= decision.stop_loss_pct <= STOP_LOSS_RANGE[1]
    if decision.take_profit_pct is not None:
        assert TAKE_PROFIT_RANGE[0] <= decision.take_profit_pct <= TAKE_PROFIT_RANGE[1]


# --- form is tolerated ---------------------------------------------------------------------------


def test_plain_json_gives_every_field() -> None:
    decision = parse_decision(json.dumps(VALID))
    assert decision.valid and decision.error is None
    assert decision.action is Action.BUY
    assert (decision.confidence, decision.position_size_pct) == (72, 15)
    assert (decision.stop_loss_pct, decision.take_profit_pct) == (2.5, 6)
    assert decision.reasoning == "uptrend on 1h and 4h"


@pytest.mark.parametrize(
    "text",
    [
        "```json\n" + json.dumps(VALID) + "\n```",
        "Here is my decision:\n" + json.dumps(VALID) + "\nGood luck!",
        json.dumps({k.upper(): v for k, v in VALID.items()}),
        json.dumps({**VALID, "action": "long"}),
        json.dumps({**VALID, "action": " Buy "}),
        str({**VALID}),  # a Python dict literal with single quotes
        json.dumps(VALID)[:-1] + ",}",  # trailing comma
        json.dumps({"decision": VALID}),  # nested one level
        json.dumps({**VALID, "confidence": "72", "position_size_pct": "15%"}),
        json.dumps(
            {"Action": "BUY", "Confidence": 72, "Position Size": 15, "Stop-Loss": 2.5, "take_profit": 6}
        ),
    ],
    ids=[
        "fence",
        "prose",
        "upper-keys",
        "long",
        "padded-case",
        "python-dict",
        "trailing-comma",
        "nested",
        "numeric-strings",
        "key-spellings",
    ],
)
def test_form_variants_parse_to_the_same_buy(text: str) -> None:
    decision = parse_decision(text)
    assert decision.valid, decision.error
    assert decision.action is Action.BUY
    assert decision.confidence == 72 and decision.position_size_pct == 15


def test_hold_needs_no_position_size() -> None:
    decision = parse_decision('{"action": "HOLD", "confidence": 40}')
    assert decision.valid and decision.action is Action.HOLD and decision.position_size_pct == 0


def test_exit_means_sell() -> None:
    decision = parse_decision('{"action": "exit", "confidence": 60, "position_size_pct": 100}')
    assert decision.valid and decision.action is Action.SELL


def test_long_reasoning_is_cut_not_rejected() -> None:
    decision = parse_decision(json.dumps({**VALID, "reasoning": "x" * 5000}))
    assert decision.valid and len(decision.reasoning) == 300


# --- content is strict ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({**VALID, "action": "MOON"}, "unknown action"),
        ({**VALID, "action": "SHORT"}, "spot only"),
        ({k: v for k, v in VALID.items() if k != "action"}, "missing action"),
        ({**VALID, "action": None}, "missing action"),
        ({**VALID, "action": 1}, "action must be a string"),
        ({**VALID, "confidence": 101}, "confidence"),
        ({**VALID, "confidence": -1}, "confidence"),
        ({**VALID, "position_size_pct": 150}, "position_size_pct"),
        ({**VALID, "stop_loss_pct": 80}, "stop_loss_pct"),
        ({**VALID, "take_profit_pct": -3}, "take_profit_pct"),
        ({**VALID, "confidence": "high"}, "not a number"),
        ({**VALID, "confidence": True}, "not a number"),
        ({**VALID, "confidence": [50]}, "not a number"),
        ({k: v for k, v in VALID.items() if k != "confidence"}, "missing confidence"),
        ({k: v for k, v in VALID.items() if k != "position_size_pct"}, "missing position_size_pct"),
    ],
)
def test_bad_content_is_an_invalid_hold_with_the_reason(fields: dict, reason: str) -> None:
    decision = parse_decision(json.dumps(fields))
    _assert_invalid_hold(decision)
    assert reason in decision.error


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "BUY",
        "I would buy BTC now with 80% confidence",
        "{",
        '{"action": "BUY"',
        "null",
        "[]",
        '{"confidence": 90}',
        '{"action": "BUY", "confidence": NaN, "position_size_pct": 5}',
        '{"action": "BUY", "confidence": Infinity, "position_size_pct": 5}',
    ],
)
def test_text_without_a_complete_decision_is_an_invalid_hold(text: str) -> None:
    _assert_invalid_hold(parse_decision(text))


def test_two_answers_that_disagree_are_rejected_as_ambiguous() -> None:
    text = json.dumps(VALID) + " or maybe " + json.dumps({**VALID, "action": "SELL"})
    decision = parse_decision(text)
    _assert_invalid_hold(decision)
    assert "ambiguous" in decision.error


def test_non_text_input_is_an_invalid_hold() -> None:
    _assert_invalid_hold(parse_decision(None))  # type: ignore[arg-type]
    _assert_invalid_hold(parse_decision(b'{"action": "BUY"}'))  # type: ignore[arg-type]


def test_an_invalid_decision_cannot_carry_a_trade() -> None:
    with pytest.raises(ValidationError, match="invalid decision must be a HOLD"):
        TradeDecision(action=Action.BUY, valid=False, error="x", position_size_pct=10)


# --- properties ----------------------------------------------------------------------------------

ACTION_SPELLINGS = st.sampled_from(["BUY", "buy", "Long", "SELL", "sell", "exit", "HOLD", "hold", "wait"])


def _decision_dicts() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "action": ACTION_SPELLINGS,
            "confidence": st.floats(*CONFIDENCE_RANGE),
            "position_size_pct": st.floats(*POSITION_SIZE_RANGE),
            "stop_loss_pct": st.floats(*STOP_LOSS_RANGE),
            "take_profit_pct": st.floats(*TAKE_PROFIT_RANGE),
            "reasoning": st.text(max_size=80),
        }
    )


@FAST
@given(text=st.text(max_size=400))
def test_property_arbitrary_text_never_raises_and_is_hold_unless_a_real_decision(text: str) -> None:
    decision = parse_decision(text)
    if decision.valid:
        # Only possible when the text really contains an action object; its content is in range.
        assert "{" in text
        _assert_content_in_range(decision)
    else:
        _assert_invalid_hold(decision)


@FAST
@given(
    fields=_decision_dicts(),
    before=st.text(alphabet="abc ,.\n:", max_size=30),
    after=st.text(alphabet="abc ,.\n:", max_size=30),
)
def test_property_valid_decisions_round_trip_through_surrounding_text(
    fields: dict, before: str, after: str
) -> None:
    decision = parse_decision(before + json.dumps(fields) + after)
    assert decision.valid, decision.error
    assert decision.confidence == pytest.approx(fields["confidence"])
    assert decision.position_size_pct == pytest.approx(fields["position_size_pct"])
    expected = {"buy": "BUY", "long": "BUY", "sell": "SELL", "exit": "SELL", "hold": "HOLD", "wait": "HOLD"}
    assert decision.action.value == expected[fields["action"].lower()]


@FAST
@given(fields=_decision_dicts(), cut=st.floats(0.0, 0.999))
def test_property_every_truncated_decision_is_an_invalid_hold(fields: dict, cut: float) -> None:
    text = json.dumps(fields)
    _assert_invalid_hold(parse_decision(text[: int(len(text) * cut)]))


@FAST
@given(
    fields=_decision_dicts(),
    field=st.sampled_from(["confidence", "position_size_pct", "stop_loss_pct", "take_profit_pct"]),
    excess=st.floats(1e-3, 1e9),
    below=st.booleans(),
)
def test_property_out_of_range_numbers_are_an_invalid_hold(
    fields: dict, field: str, excess: float, below: bool
) -> None:
    bounds = {
        "confidence": CONFIDENCE_RANGE,
        "position_size_pct": POSITION_SIZE_RANGE,
        "stop_loss_pct": STOP_LOSS_RANGE,
        "take_profit_pct": TAKE_PROFIT_RANGE,
    }[field]
    fields[field] = bounds[0] - excess if below else bounds[1] + excess
    decision = parse_decision(json.dumps(fields))
    _assert_invalid_hold(decision)
    assert field in decision.error


@FAST
@given(fields=_decision_dicts(), action=st.text(min_size=1, max_size=12))
def test_property_unknown_actions_are_an_invalid_hold(fields: dict, action: str) -> None:
    known = {
        "BUY",
        "LONG",
        "GO_LONG",
        "ENTER_LONG",
        "SELL",
        "EXIT",
        "CLOSE",
        "CLOSE_LONG",
        "EXIT_LONG",
        "HOLD",
        "WAIT",
        "NEUTRAL",
        "NONE",
        "NO_TRADE",
    }
    normalized = "_".join(action.strip().upper().replace("-", " ").split())
    fields["action"] = action
    decision = parse_decision(json.dumps(fields))
    if normalized in known:
        assert decision.valid
    else:
        _assert_invalid_hold(decision)


# --- fuzz corpus: mutations of real completions -------------------------------------------------

SEED_COMPLETIONS = [
    json.dumps(VALID),
    '{"action": "HOLD", "confidence": 55, "position_size_pct": 0, "stop_loss_pct": 1.5, '
    '"take_profit_pct": 3, "reasoning": "mixed signals"}',
    '```json\n{"action": "SELL", "confidence": 80, "position_size_pct": 100, "reasoning": "trend broke"}\n```',
    "Decision: {'action': 'BUY', 'confidence': 60, 'position_size_pct': 10}",
    # What SmolLM2-135M actually writes without constraints (echoes, prose, half objects).
    "BTC/USDT 2024-06-01 12:00Z price 67512.3 chg1h 0.42%\n\nThe market is now 100% bullish.",
    '{"action": "BUY", "confidence": 0.2, "position_size_pct": 0.2, "stop_loss_pct": 0.2, "take_profit_pct": 0.2',
]


def _mutate(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        pos = rng.randrange(len(chars) + 1)
        if op == 0 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif op == 1:
            chars.insert(pos, rng.choice("{}[]\":,0123456789-.eE nNaA\\'`"))
        elif op == 2 and chars:
            chars[min(pos, len(chars) - 1)] = chr(rng.randrange(32, 0x3000))
        else:
            chars = chars[:pos]
    return "".join(chars)


def test_fuzz_corpus_never_raises_and_only_valid_content_passes() -> None:
    rng = random.Random(20240601)
    outcomes = {"valid": 0, "invalid": 0}
    for seed in SEED_COMPLETIONS:
        for _ in range(400):
            decision = parse_decision(_mutate(seed, rng))
            if decision.valid:
                _assert_content_in_range(decision)
                outcomes["valid"] += 1
            else:
                _assert_invalid_hold(decision)
                outcomes["invalid"] += 1
    # The corpus must exercise both outcomes, or it proves nothing.
    assert outcomes["valid"] > 100 and outcomes["invalid"] > 100, outcomes


def test_pathological_input_is_bounded_in_time() -> None:
    import time

    started = time.perf_counter()
    for text in ["{" * 100_000, '{"a":' * 20_000, "[" * 50_000 + "{", '{"action": "' + "\\" * 100_000]:
        _assert_invalid_hold(parse_decision(text))
    assert time.perf_counter() - started < 5.0

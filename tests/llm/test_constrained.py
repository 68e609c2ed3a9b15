"""The decision grammar: accepts exactly decisions the parser takes as valid, with a hard length bound."""

from __future__ import annotations

import json
from typing import Any

import pytest
import xgrammar as xgr

from crypto_pipeline.llm.constrained import (
    GRAMMAR_REASONING_CHARS,
    DecisionGrammar,
    decision_grammar_ebnf,
    max_completion_chars,
)
from crypto_pipeline.llm.decision import parse_decision


@pytest.fixture(scope="module")
def grammar(smollm2_tokenizer: Any) -> DecisionGrammar:
    return DecisionGrammar.for_tokenizer(smollm2_tokenizer, len(smollm2_tokenizer))


def _accepts(grammar: DecisionGrammar, text: str) -> bool:
    matcher = xgr.GrammarMatcher(grammar.compiled)
    return matcher.accept_string(text) and matcher.is_completed()


def _text(
    action: str = "BUY",
    conf: str = "70",
    size: str = "10",
    sl: str = "2.5",
    tp: str = "6",
    reason: str = "up",
) -> str:
    return (
        f'{{"action": "{action}", "confidence": {conf}, "position_size_pct": {size}, '
        f'"stop_loss_pct": {sl}, "take_profit_pct": {tp}, "reasoning": "{reason}"}}'
    )


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"action": "SELL"},
        {"action": "HOLD", "size": "0"},
        {"conf": "100", "size": "100", "sl": "50", "tp": "100"},
        {"conf": "0", "sl": "0.5", "tp": "99.9"},
        {"reason": ""},
        {"reason": "x" * GRAMMAR_REASONING_CHARS},
    ],
)
def test_grammar_accepts_valid_decisions_and_they_parse(
    grammar: DecisionGrammar, fields: dict[str, str]
) -> None:
    text = _text(**fields)
    assert _accepts(grammar, text)
    assert parse_decision(text).valid


@pytest.mark.parametrize(
    "fields",
    [
        {"action": "SHORT"},
        {"action": "buy"},
        {"conf": "101"},
        {"conf": "-1"},
        {"size": "100.5"},
        {"sl": "51"},
        {"sl": "50.5"},
        {"tp": "1e3"},
        {"conf": "07"},
        {"reason": 'say "hi"'},
        {"reason": "x" * (GRAMMAR_REASONING_CHARS + 1)},
        {"reason": "two\nlines"},
    ],
)
def test_grammar_rejects_what_the_schema_forbids(grammar: DecisionGrammar, fields: dict[str, str]) -> None:
    assert not _accepts(grammar, _text(**fields))


def test_the_length_bound_is_tight() -> None:
    longest = _text(
        action="HOLD", conf="99.9", size="99.9", sl="49.9", tp="99.9", reason="x" * GRAMMAR_REASONING_CHARS
    )
    assert len(longest) == max_completion_chars()


def test_grammar_is_built_from_the_decision_bounds() -> None:
    ebnf = decision_grammar_ebnf()
    assert 'stop_loss_pct ::= "50"' in ebnf and 'confidence ::= "100"' in ebnf
    assert json.loads(_text())["action"] == "BUY"


def test_compiled_grammar_is_cached_per_tokenizer(smollm2_tokenizer: Any, grammar: DecisionGrammar) -> None:
    assert DecisionGrammar.for_tokenizer(smollm2_tokenizer, len(smollm2_tokenizer)) is grammar

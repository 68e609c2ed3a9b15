"""Constrained decoding: the model can only write a decision that `parse_decision` accepts.

The grammar is a fixed JSON template with constrained slots (an enum for the action, bounded numbers
with at most one decimal, a short reasoning string), generated from the same bounds as `TradeDecision`.
xgrammar (MLC, C++ core) compiles it against the tokenizer's vocabulary and masks the logits at every
step. Every token adds at least one character and the grammar caps the length, so a completion always
closes within `max_completion_chars()` tokens: no truncated JSON.
(lm-format-enforcer 0.11.3 does not import with transformers 5; xgrammar 0.2.8 does.)
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import torch
from transformers import LogitsProcessor

from crypto_pipeline.llm.decision import (
    CONFIDENCE_RANGE,
    POSITION_SIZE_RANGE,
    STOP_LOSS_RANGE,
    TAKE_PROFIT_RANGE,
    Action,
)

if TYPE_CHECKING:
    import xgrammar

# What the grammar lets the model write as reasoning: short, one line, no quotes to escape.
GRAMMAR_REASONING_CHARS = 100
_FIELDS = (
    ("confidence", CONFIDENCE_RANGE),
    ("position_size_pct", POSITION_SIZE_RANGE),
    ("stop_loss_pct", STOP_LOSS_RANGE),
    ("take_profit_pct", TAKE_PROFIT_RANGE),
)


def _bounded_number_rule(upper: float) -> str:
    """EBNF for a number in [0, upper] with at most one decimal; `upper` a multiple of 10 in [20, 100]."""
    top = int(upper)
    if top != upper or top % 10 or not 20 <= top <= 100:
        raise ValueError(f"grammar supports upper bounds that are multiples of 10 in [20, 100], got {upper}")
    tens = top // 10
    two_digits = "[1-9] [0-9]" if tens == 10 else f"[1-{tens - 1}] [0-9]"
    return f'"{top}" | {two_digits} decimal? | [0-9] decimal?'


def decision_grammar_ebnf() -> str:
    """The decision template as xgrammar EBNF (keys in the order the system prompt shows)."""
    actions = " | ".join(f'"{a.value}"' for a in Action)
    lines = [
        'root ::= "{\\"action\\": \\"" action "\\""'
        + "".join(f' ", \\"{name}\\": " {name}' for name, _ in _FIELDS)
        + ' ", \\"reasoning\\": \\"" reasoning "\\"}"',
        f"action ::= {actions}",
        'decimal ::= "." [0-9]',
        *(f"{name} ::= {_bounded_number_rule(bounds[1])}" for name, bounds in _FIELDS),
        f'reasoning ::= [^"\\\\\\0-\\x1f]{{0,{GRAMMAR_REASONING_CHARS}}}',
    ]
    for _, (low, _high) in _FIELDS:
        if low != 0:
            raise ValueError("grammar numbers start at 0")
    return "\n".join(lines) + "\n"


def max_completion_chars() -> int:
    """The longest text the grammar allows: a hard bound on the tokens a constrained completion needs."""
    longest_action = max(len(a.value) for a in Action)
    text = '{"action": "' + "X" * longest_action + '"'
    for name, (_, high) in _FIELDS:
        text += f', "{name}": ' + "X" * max(len(f"{int(high)}"), len(f"{int(high) - 1}.9"))
    text += ', "reasoning": "' + "X" * GRAMMAR_REASONING_CHARS + '"}'
    return len(text)


class DecisionGrammar:
    """The decision grammar compiled for one tokenizer (compiled once, shared by every generate call)."""

    _lock = threading.Lock()
    _cache: dict[tuple[int, int], DecisionGrammar] = {}

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        xgr = _import_xgrammar()
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.vocab_size = vocab_size
        self.compiled: xgrammar.CompiledGrammar = xgr.GrammarCompiler(info).compile_grammar(
            decision_grammar_ebnf()
        )

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, vocab_size: int) -> DecisionGrammar:
        key = (id(tokenizer), vocab_size)
        with cls._lock:
            if key not in cls._cache:
                cls._cache[key] = cls(tokenizer, vocab_size)
            return cls._cache[key]

    def logits_processor(self) -> DecisionLogitsProcessor:
        """A fresh processor: it holds per-row grammar state, so it serves one `generate` call."""
        return DecisionLogitsProcessor(self.compiled, self.vocab_size)


class DecisionLogitsProcessor(LogitsProcessor):
    """Masks every token the grammar forbids, row by row of a batch, for one `generate` call."""

    def __init__(self, compiled: xgrammar.CompiledGrammar, vocab_size: int) -> None:
        self._xgr = _import_xgrammar()
        self._compiled = compiled
        self._vocab_size = vocab_size
        self._matchers: list[Any] = []
        self._bitmask: torch.Tensor | None = None
        self._batch = self._xgr.BatchGrammarMatcher(max_threads=1)
        self._started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self._matchers:
            self._matchers = [self._xgr.GrammarMatcher(self._compiled) for _ in range(input_ids.shape[0])]
            self._bitmask = self._xgr.allocate_token_bitmask(input_ids.shape[0], self._vocab_size)
        if self._started:
            # The previous step's token of each live row; finished rows only receive padding.
            for row, matcher in enumerate(self._matchers):
                if not matcher.is_terminated():
                    matcher.accept_token(int(input_ids[row, -1]))
        self._started = True
        live = [i for i, m in enumerate(self._matchers) if not m.is_terminated()]
        assert self._bitmask is not None
        self._bitmask.fill_(-1)  # finished rows: no mask (generate overwrites their token with padding)
        if live:
            self._batch.batch_fill_next_token_bitmask(
                [self._matchers[i] for i in live], self._bitmask, indices=live
            )
        # xgrammar fills the mask on the CPU; on a GPU it is applied where the logits are.
        mask = self._bitmask if scores.device == self._bitmask.device else self._bitmask.to(scores.device)
        self._xgr.apply_token_bitmask_inplace(scores, mask, vocab_size=scores.shape[-1])
        return scores


def constrained_decoding_available() -> bool:
    try:
        _import_xgrammar()
    except ImportError:
        return False
    return True


def _import_xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "constrained decoding needs xgrammar (pip install xgrammar==0.2.8); "
            "or run LocalLLM(constrained=False)"
        ) from exc
    return xgrammar

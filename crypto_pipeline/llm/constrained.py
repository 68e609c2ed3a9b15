"""Constrained decoding: the model can only write a decision that `parse_decision` accepts.

The grammar (`schema.decision_grammar`) is a fixed JSON template with constrained slots, generated from
the same bounds as `TradeDecision`.
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

from crypto_pipeline.llm.schema import (  # noqa: F401 - re-exported: the grammar's bounds live there
    GRAMMAR_REASONING_CHARS,
    decision_grammar,
    max_completion_chars,
)

if TYPE_CHECKING:
    import xgrammar


def decision_grammar_ebnf() -> str:
    """The decision template as xgrammar EBNF (generated in `schema.py` with its GBNF and JSON-schema twins)."""
    return decision_grammar("xgrammar")


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

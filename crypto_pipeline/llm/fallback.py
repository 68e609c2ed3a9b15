"""Fallback: when the primary provider gives no answer (down, timeout, out of memory), ask a backup
(typically `RuleBased`) for those states, so an outage of the LLM does not freeze the strategy.

Only outages fall back. An answer the model did give but that fails the parser stays an invalid HOLD:
the backup never overrules the model, it stands in for a model that is not there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crypto_pipeline.llm.decision import MAX_REASONING_CHARS, TradeDecision
from crypto_pipeline.llm.provider import DecisionProvider, decide_safely

if TYPE_CHECKING:
    from crypto_pipeline.state import MarketState


def gave_no_answer(decision: TradeDecision) -> bool:
    """Invalid without any model text: the provider failed before a model could answer."""
    return not decision.valid and decision.raw_text is None


class Fallback:
    """A `DecisionProvider`: the primary's decisions, with the backup's where the primary was down."""

    def __init__(
        self, primary: DecisionProvider, backup: DecisionProvider, *, name: str | None = None
    ) -> None:
        self.primary = primary
        self.backup = backup
        self.name = name or f"{primary.name}|{backup.name}"

    def decide(self, states: list[MarketState]) -> list[TradeDecision]:
        decisions = decide_safely(self.primary, states)
        down = [i for i, d in enumerate(decisions) if gave_no_answer(d)]
        if not down:
            return decisions
        replacements = decide_safely(self.backup, [states[i] for i in down])
        for i, replacement in zip(down, replacements, strict=True):
            if not replacement.valid:
                continue  # both down: keep the primary's reason, it is the one to fix
            # The backup's own provenance (model id, version) stays: it is what decided.
            why = f"fallback, {self.primary.name} down ({decisions[i].error}): {replacement.reasoning}"
            decisions[i] = replacement.with_meta(reasoning=why[:MAX_REASONING_CHARS])
        return decisions

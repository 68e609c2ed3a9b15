"""One model call for the decisions of several independent runs at once (the folds of a walk-forward).

Within a run the decision times are sequential (each prompt carries the portfolio the previous decisions
left), so one run can batch only its symbols. Folds are independent (each its own account), so the folds
of a walk-forward run in threads, each through the one decision path (`run_policy` -> `DecisionStep`,
the decision cache, the risk engine, the journal), each with its own `BatchedProvider`; the
`FoldBatcher` behind them gathers their concurrent `decide` calls and makes one call of the real
provider with every run's states (folds x symbols), then hands each run its own decisions.

A call goes out once every run still deciding is waiting on one; it carries the waiting runs' states
in run order. So the provider's k-th call holds the k-th request of every run still going, whatever the
threads' timing: the batches are the same on every rerun, and a provider whose answer for a state does
not depend on the rest of its batch (RuleBased; LocalLLM's left-padded batches, within floating-point
rounding) decides exactly as the runs would one after another.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from crypto_pipeline.llm.provider import DecisionProvider, decide_safely, failed_decisions

if TYPE_CHECKING:
    from crypto_pipeline.llm.decision import TradeDecision
    from crypto_pipeline.state import MarketState

log = logging.getLogger(__name__)


class FoldBatcher:
    """Gathers the `decide` calls of `runs` concurrent runs (threads) into single calls of `provider`.

    Each run decides through `member(i)` and calls `BatchedProvider.close` when it is done (also when it
    fails), so that the others no longer wait for it. `calls` and `largest` say how it went."""

    def __init__(self, provider: DecisionProvider, runs: int) -> None:
        self.provider = provider
        self.runs = runs
        self.calls = 0  # calls of the provider
        self.states = 0  # states they carried
        self.largest = 0  # the most states in one call
        self._cond = threading.Condition()
        self._live = set(range(runs))  # runs that may still ask
        self._pending: dict[int, list[MarketState]] = {}  # run -> the states it waits on
        self._answers: dict[int, list[TradeDecision]] = {}
        self._busy = False  # a run is calling the provider for a gathered batch

    def member(self, index: int) -> BatchedProvider:
        if not 0 <= index < self.runs:
            raise ValueError(f"run {index} of a batcher for {self.runs} runs")
        return BatchedProvider(self, index)

    def decide(self, index: int, states: Sequence[MarketState]) -> list[TradeDecision]:
        """Run `index`'s states, decided in one call with every other run's concurrent request."""
        if not states:
            return []
        with self._cond:
            if index not in self._live:
                raise RuntimeError(f"run {index} asked after it was closed")
            self._pending[index] = list(states)
            self._cond.notify_all()
            while index not in self._answers:
                if not self._busy and self._pending and len(self._pending) == len(self._live):
                    self._call()  # every run still going waits: this thread makes the call
                else:
                    self._cond.wait()
            return self._answers.pop(index)

    def close(self, index: int) -> None:
        """Run `index` will ask no more: the others stop waiting for it."""
        with self._cond:
            self._live.discard(index)
            self._pending.pop(index, None)
            self._cond.notify_all()

    def _call(self) -> None:
        """One provider call for every pending request (called with the lock held; released meanwhile)."""
        batch = sorted(self._pending.items())
        self._pending = {}
        self._busy = True
        states = [s for _, part in batch for s in part]
        decisions: list[TradeDecision] | None = None
        self._cond.release()
        try:
            decisions = decide_safely(self.provider, states)
        finally:
            self._cond.acquire()
            self._busy = False
            if decisions is None:  # the call was interrupted: nobody may wait forever
                name = getattr(self.provider, "name", type(self.provider).__name__)
                decisions = failed_decisions(states, f"batched call of {name} interrupted", provider=name)
            self.calls += 1
            self.states += len(states)
            self.largest = max(self.largest, len(states))
            start = 0
            for index, part in batch:
                self._answers[index] = decisions[start : start + len(part)]
                start += len(part)
            self._cond.notify_all()


class BatchedProvider:
    """The provider as one run sees it: `decide` joins the batcher's next call; every other attribute
    (name, model version, dtype, system prompt: what the decision cache keys on) is the provider's."""

    def __init__(self, batcher: FoldBatcher, index: int) -> None:
        self._batcher, self._index = batcher, index

    @property
    def name(self) -> str:
        provider = self._batcher.provider
        return getattr(provider, "name", type(provider).__name__)

    def decide(self, states: list[MarketState]) -> list[TradeDecision]:
        return self._batcher.decide(self._index, states)

    def close(self) -> None:
        self._batcher.close(self._index)

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        return getattr(self._batcher.provider, attribute)

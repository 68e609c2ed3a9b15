"""The one interface every decision source implements, and the guard that keeps failures out of the
trading loop: a provider that breaks yields invalid HOLDs with the reason, never an exception."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from crypto_pipeline.llm.decision import TradeDecision

if TYPE_CHECKING:
    from crypto_pipeline.state import MarketState

log = logging.getLogger(__name__)


@runtime_checkable
class DecisionProvider(Protocol):
    """Turns market states into decisions, one per state, in order. Must not raise."""

    name: str

    def decide(self, states: list[MarketState]) -> list[TradeDecision]: ...


def state_meta(state: MarketState) -> dict[str, Any]:
    return {"symbol": state.symbol, "at": state.at}


def failed_decisions(states: Sequence[MarketState], reason: str, **meta: Any) -> list[TradeDecision]:
    """One invalid HOLD per state, each carrying `reason` (logged once, as the contract asks)."""
    log.warning("decision provider failed for %d state(s): %s", len(states), reason)
    return [TradeDecision.invalid(reason, **state_meta(s), **meta) for s in states]


def describe_error(exc: BaseException) -> str:
    """A short reason for an exception. Only the type and message: never request headers or secrets."""
    message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def decide_safely(provider: DecisionProvider, states: list[MarketState]) -> list[TradeDecision]:
    """Call `provider.decide`, turning any exception or a wrong-length answer into invalid HOLDs."""
    name = getattr(provider, "name", type(provider).__name__)
    if not states:
        return []
    try:
        decisions = provider.decide(states)
    except Exception as exc:  # noqa: BLE001 - the trading loop must never see a provider's exception
        return failed_decisions(states, f"provider {name} raised {describe_error(exc)}", provider=name)
    if len(decisions) != len(states):
        return failed_decisions(
            states,
            f"provider {name} returned {len(decisions)} decisions for {len(states)} states",
            provider=name,
        )
    return decisions

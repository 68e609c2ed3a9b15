"""Swarm consensus: several providers asked in parallel, each under a timeout; their votes are weighted
by each member's track record (stored, updated from realized outcomes); an action wins only with a
quorum of the total weight, otherwise the swarm HOLDs. Every member's vote is kept with the decision."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from crypto_pipeline.llm.decision import Action, MemberVote, TradeDecision
from crypto_pipeline.llm.provider import DecisionProvider, decide_safely, describe_error, state_meta

if TYPE_CHECKING:
    from crypto_pipeline.state import MarketState


class MemberRecord(BaseModel):
    decisions: int = 0
    correct: int = 0

    def weight(self, prior_correct: float, prior_decisions: float) -> float:
        """Smoothed hit rate: a new member starts at prior_correct / prior_decisions (0.5)."""
        return (self.correct + prior_correct) / (self.decisions + prior_decisions)


class TrackRecord(BaseModel):
    """Per-member hit counts, persisted as JSON so weights survive restarts."""

    members: dict[str, MemberRecord] = Field(default_factory=dict)
    prior_correct: float = 1.0
    prior_decisions: float = 2.0
    # A move smaller than this (in %) counts as flat: HOLD was right, BUY and SELL were not.
    flat_threshold_pct: float = 0.2

    def weight(self, member: str) -> float:
        record = self.members.get(member, MemberRecord())
        return record.weight(self.prior_correct, self.prior_decisions)

    def update(self, decision: TradeDecision, realized_return_pct: float) -> None:
        """Score every valid vote of a swarm decision against what the market did next."""
        for vote in decision.votes:
            if not vote.valid:
                continue  # a timeout or a parse failure says nothing about the member's judgement
            record = self.members.setdefault(vote.member, MemberRecord())
            record.decisions += 1
            record.correct += int(_was_right(vote.action, realized_return_pct, self.flat_threshold_pct))

    @classmethod
    def load(cls, path: Path) -> TrackRecord:
        return cls.model_validate_json(path.read_text()) if path.exists() else cls()

    def save(self, path: Path) -> None:
        """Atomic write: a crash mid-save never leaves a truncated record."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.model_dump_json(indent=2))
        os.replace(tmp, path)


def _was_right(action: Action, realized_return_pct: float, flat: float) -> bool:
    if action is Action.BUY:
        return realized_return_pct > flat
    if action is Action.SELL:
        return realized_return_pct < -flat
    return abs(realized_return_pct) <= flat


class Swarm:
    """A `DecisionProvider` that asks its members in parallel and takes a weighted, quorate vote."""

    def __init__(
        self,
        members: Sequence[DecisionProvider],
        *,
        quorum: float = 0.5,
        timeout_s: float = 60.0,
        track_record: TrackRecord | None = None,
        track_record_path: Path | None = None,
        name: str = "swarm",
    ) -> None:
        names = [m.name for m in members]
        if not members or len(set(names)) != len(names):
            raise ValueError(f"a swarm needs members with distinct names, got {names}")
        if not 0 < quorum <= 1:
            raise ValueError(f"quorum is a share of the total weight in (0, 1], got {quorum}")
        self.members = list(members)
        self.quorum = quorum
        self.timeout_s = timeout_s
        self.track_record_path = track_record_path
        if track_record is None:
            track_record = TrackRecord.load(track_record_path) if track_record_path else TrackRecord()
        self.track_record = track_record
        self.name = name

    def decide(self, states: list[MarketState]) -> list[TradeDecision]:
        if not states:
            return []
        started = time.perf_counter()
        answers = self._ask_all(states)
        wall_ms = (time.perf_counter() - started) * 1e3
        return [
            self._consensus(state, [answers[m.name][i] for m in self.members], wall_ms)
            for i, state in enumerate(states)
        ]

    def record_outcome(self, decision: TradeDecision, realized_return_pct: float) -> None:
        """Update the members' track record from a realized outcome (and persist it if a path is set)."""
        self.track_record.update(decision, realized_return_pct)
        if self.track_record_path is not None:
            self.track_record.save(self.track_record_path)

    def _ask_all(self, states: list[MarketState]) -> dict[str, list[TradeDecision]]:
        """Every member in its own daemon thread; one that misses the deadline is abandoned, not awaited."""
        futures: dict[str, Future[list[TradeDecision]]] = {}
        for member in self.members:
            future: Future[list[TradeDecision]] = Future()
            thread = threading.Thread(target=_run_member, args=(member, states, future), daemon=True)
            thread.start()
            futures[member.name] = future
        deadline = time.monotonic() + self.timeout_s
        answers: dict[str, list[TradeDecision]] = {}
        for member in self.members:
            try:
                answers[member.name] = futures[member.name].result(
                    timeout=max(0.0, deadline - time.monotonic())
                )
            except FutureTimeout:
                answers[member.name] = [
                    TradeDecision.invalid(
                        f"timeout after {self.timeout_s:g}s", provider=member.name, **state_meta(s)
                    )
                    for s in states
                ]
        return answers

    def _consensus(
        self, state: MarketState, member_decisions: list[TradeDecision], wall_ms: float
    ) -> TradeDecision:
        votes = tuple(
            MemberVote(
                member=m.name,
                action=d.action,
                confidence=d.confidence,
                weight=self.track_record.weight(m.name),
                valid=d.valid,
                error=d.error,
                latency_ms=d.latency_ms,
            )
            for m, d in zip(self.members, member_decisions, strict=True)
        )
        usage = {
            "prompt_tokens": _sum_or_none(d.prompt_tokens for d in member_decisions),
            "completion_tokens": _sum_or_none(d.completion_tokens for d in member_decisions),
            "cost_usd": _sum_or_none(d.cost_usd for d in member_decisions),
        }
        # The prompt the members were shown is recorded with the consensus too (rule members have none).
        versions = sorted({d.prompt_version for d in member_decisions if d.prompt_version})
        hashes = {d.prompt_hash for d in member_decisions if d.prompt_hash}
        meta = {
            **state_meta(state),
            "provider": self.name,
            "model_id": self.name,
            "model_version": ",".join(m.name for m in self.members),
            "prompt_version": ",".join(versions) or None,
            "prompt_hash": hashes.pop() if len(hashes) == 1 else None,
            "latency_ms": wall_ms,
            "votes": votes,
            **usage,
        }
        valid = [(v, d) for v, d in zip(votes, member_decisions, strict=True) if v.valid]
        if not valid:
            reasons = "; ".join(f"{v.member}: {v.error}" for v in votes)
            return TradeDecision.invalid(f"no valid vote ({reasons})", **meta)

        total_weight = sum(v.weight for v in votes)  # absent members count: they did not agree
        support = {a: sum(v.weight for v, _ in valid if v.action is a) for a in Action}
        winner = max(Action, key=lambda a: support[a])
        share = support[winner] / total_weight if total_weight > 0 else 0.0
        tally = " ".join(f"{a.value} {support[a] / total_weight:.2f}" for a in Action if support[a])
        tied = [a for a in Action if a is not winner and support[a] == support[winner]]
        if tied:
            return TradeDecision(action=Action.HOLD, confidence=0.0, reasoning=f"tie ({tally})", **meta)
        if share < self.quorum:
            return TradeDecision(
                action=Action.HOLD,
                confidence=0.0,
                reasoning=f"no quorum ({tally}; need {self.quorum:.2f})",
                **meta,
            )
        agreeing = [d for v, d in valid if v.action is winner]
        weights = [v.weight for v, _ in valid if v.action is winner]
        return TradeDecision(
            action=winner,
            confidence=_weighted_mean([d.confidence for d in agreeing], weights) * share,
            position_size_pct=_weighted_mean([d.position_size_pct for d in agreeing], weights)
            if winner is not Action.HOLD
            else 0.0,
            stop_loss_pct=_weighted_optional([d.stop_loss_pct for d in agreeing], weights),
            take_profit_pct=_weighted_optional([d.take_profit_pct for d in agreeing], weights),
            reasoning=f"quorum {winner.value} ({tally})",
            **meta,
        )


def _run_member(
    member: DecisionProvider, states: list[MarketState], future: Future[list[TradeDecision]]
) -> None:
    try:
        future.set_result(decide_safely(member, states))
    except BaseException as exc:  # noqa: BLE001 - even a KeyboardInterrupt-like failure must reach the vote
        reason = f"member {member.name} failed: {describe_error(exc)}"
        future.set_result(
            [TradeDecision.invalid(reason, provider=member.name, **state_meta(s)) for s in states]
        )


def _weighted_mean(values: list[float], weights: list[float]) -> float:
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights, strict=True)) / total if total > 0 else 0.0


def _weighted_optional(values: list[float | None], weights: list[float]) -> float | None:
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if v is not None]
    return _weighted_mean([v for v, _ in pairs], [w for _, w in pairs]) if pairs else None


def _sum_or_none(values: Iterable[Any]) -> Any:
    """Sum of the known values (ints stay ints); None when no member reported one."""
    present = [v for v in values if v is not None]
    return sum(present) if present else None

"""Swarm: parallel members, per-member timeout, track-record weights, quorum, votes kept."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from crypto_pipeline.llm.decision import Action, TradeDecision
from crypto_pipeline.llm.prompts import PROMPT_VERSION
from crypto_pipeline.llm.provider import DecisionProvider, state_meta
from crypto_pipeline.llm.rule_based import RuleBased
from crypto_pipeline.llm.swarm import MemberRecord, Swarm, TrackRecord
from crypto_pipeline.state import MarketState


@dataclass
class Fixed:
    """A member that always answers `action` (once its gate opens, if it has one), or raises."""

    name: str
    action: Action = Action.HOLD
    confidence: float = 60.0
    size: float = 10.0
    gate: threading.Event | threading.Barrier | None = None  # wait on it before answering
    fail: bool = False
    invalid: bool = False
    prompt_version: str | None = None
    prompt_hash: str | None = None

    def decide(self, states: list[MarketState]) -> list[TradeDecision]:
        if isinstance(self.gate, threading.Event):
            self.gate.wait(timeout=60)
        elif isinstance(self.gate, threading.Barrier):
            self.gate.wait()  # raises BrokenBarrierError unless every member reaches it at the same time
        if self.fail:
            raise RuntimeError("CUDA out of memory")
        if self.invalid:
            return [TradeDecision.invalid("unparseable", provider=self.name, **state_meta(s)) for s in states]
        size = 0.0 if self.action is Action.HOLD else self.size
        return [
            TradeDecision(
                action=self.action,
                confidence=self.confidence,
                position_size_pct=size,
                stop_loss_pct=2.0,
                prompt_tokens=100,
                cost_usd=0.001,
                prompt_version=self.prompt_version,
                prompt_hash=self.prompt_hash,
                **state_meta(s),
            )
            for s in states
        ]


STATE = MarketState.example()


def test_is_a_decision_provider() -> None:
    assert isinstance(Swarm([Fixed("a")]), DecisionProvider)


def test_majority_wins_and_every_vote_is_kept() -> None:
    swarm = Swarm([Fixed("a", Action.BUY, 80, 10), Fixed("b", Action.BUY, 60, 30), Fixed("c", Action.SELL)])
    [d] = swarm.decide([STATE])
    assert d.valid and d.action is Action.BUY
    assert [v.member for v in d.votes] == ["a", "b", "c"]
    assert [v.action for v in d.votes] == [Action.BUY, Action.BUY, Action.SELL]
    assert d.position_size_pct == pytest.approx(20.0)  # equal weights: mean of the agreeing sizes
    assert d.confidence == pytest.approx(70.0 * 2 / 3)  # mean confidence scaled by the share of support
    assert d.prompt_tokens == 300 and d.cost_usd == pytest.approx(0.003)
    assert d.symbol == STATE.symbol and d.at == STATE.at


def test_the_members_prompt_version_and_hash_are_recorded_with_the_consensus() -> None:
    llm_a = Fixed("a", Action.BUY, prompt_version=PROMPT_VERSION, prompt_hash="abc")
    llm_b = Fixed("b", Action.BUY, prompt_version=PROMPT_VERSION, prompt_hash="abc")
    [d] = Swarm([llm_a, llm_b, RuleBased()]).decide([STATE])
    assert (d.prompt_version, d.prompt_hash) == (PROMPT_VERSION, "abc")  # rules show no prompt
    llm_b.prompt_version, llm_b.prompt_hash = "decision-v0", "def"
    [mixed] = Swarm([llm_a, llm_b]).decide([STATE])
    assert (mixed.prompt_version, mixed.prompt_hash) == (f"decision-v0,{PROMPT_VERSION}", None)


def test_no_quorum_is_a_hold() -> None:
    swarm = Swarm([Fixed("a", Action.BUY), Fixed("b", Action.BUY), Fixed("c", Action.SELL)], quorum=0.7)
    [d] = swarm.decide([STATE])
    assert d.valid and d.action is Action.HOLD and d.position_size_pct == 0
    assert "no quorum" in d.reasoning and "BUY 0.67" in d.reasoning


def test_an_even_split_is_a_hold() -> None:
    [d] = Swarm([Fixed("a", Action.BUY), Fixed("b", Action.SELL)], quorum=0.5).decide([STATE])
    assert d.valid and d.action is Action.HOLD and "tie" in d.reasoning


def test_failed_members_count_against_the_quorum() -> None:
    swarm = Swarm([Fixed("a", Action.BUY), Fixed("b", fail=True), Fixed("c", invalid=True)], quorum=0.5)
    [d] = swarm.decide([STATE])
    assert d.action is Action.HOLD and "no quorum" in d.reasoning
    by_member = {v.member: v for v in d.votes}
    assert not by_member["b"].valid and "out of memory" in by_member["b"].error
    assert not by_member["c"].valid and by_member["c"].error == "unparseable"


def test_a_slow_member_times_out_and_the_rest_decide_in_time() -> None:
    # the slow member answers only once the test lets it: the swarm must decide without it
    released = threading.Event()
    swarm = Swarm(
        [Fixed("fast1", Action.SELL), Fixed("fast2", Action.SELL), Fixed("slow", Action.BUY, gate=released)],
        timeout_s=0.3,
    )
    try:
        [d] = swarm.decide([STATE])
        assert not released.is_set()
    finally:
        released.set()
    assert d.action is Action.SELL
    slow = next(v for v in d.votes if v.member == "slow")
    assert not slow.valid and "timeout after 0.3s" in slow.error


def test_members_run_in_parallel() -> None:
    # the four members can only get past the barrier together: run one after another, it breaks
    together = threading.Barrier(4, timeout=30)
    swarm = Swarm([Fixed(f"m{i}", Action.HOLD, gate=together) for i in range(4)], timeout_s=60)
    [d] = swarm.decide([STATE])
    assert d.valid and not together.broken
    assert all(v.valid for v in d.votes) and len(d.votes) == 4


def test_all_members_failing_is_an_invalid_hold_listing_each_reason() -> None:
    released = threading.Event()
    try:
        [d] = Swarm([Fixed("a", fail=True), Fixed("b", gate=released)], timeout_s=0.2).decide([STATE])
    finally:
        released.set()
    assert not d.valid and d.action is Action.HOLD
    assert "a: provider a raised RuntimeError" in d.error and "b: timeout" in d.error


def test_track_record_weights_tip_the_vote() -> None:
    record = TrackRecord(
        members={
            "good": MemberRecord(decisions=50, correct=45),
            "bad1": MemberRecord(decisions=50, correct=10),
            "bad2": MemberRecord(decisions=50, correct=10),
        }
    )
    swarm = Swarm(
        [Fixed("good", Action.BUY), Fixed("bad1", Action.SELL), Fixed("bad2", Action.SELL)],
        track_record=record,
        quorum=0.5,
    )
    [d] = swarm.decide([STATE])
    assert d.action is Action.BUY  # one reliable member outweighs two unreliable ones
    # Without the record, two votes beat one.
    [plain] = Swarm(
        [Fixed("good", Action.BUY), Fixed("bad1", Action.SELL), Fixed("bad2", Action.SELL)]
    ).decide([STATE])
    assert plain.action is Action.SELL


def test_outcomes_update_and_persist_the_track_record(tmp_path: Path) -> None:
    path = tmp_path / "swarm" / "track_record.json"
    swarm = Swarm(
        [Fixed("bull", Action.BUY), Fixed("bear", Action.SELL), Fixed("broken", invalid=True)],
        track_record_path=path,
    )
    [d] = swarm.decide([STATE])
    swarm.record_outcome(d, realized_return_pct=3.0)
    swarm.record_outcome(d, realized_return_pct=2.0)
    reloaded = TrackRecord.load(path)
    assert reloaded.members["bull"] == MemberRecord(decisions=2, correct=2)
    assert reloaded.members["bear"] == MemberRecord(decisions=2, correct=0)
    assert "broken" not in reloaded.members  # failures say nothing about judgement
    assert reloaded.weight("bull") > reloaded.weight("newcomer") == 0.5 > reloaded.weight("bear")
    assert Swarm([Fixed("bull")], track_record_path=path).track_record.weight("bull") == reloaded.weight(
        "bull"
    )


def test_hold_is_scored_right_on_a_flat_market() -> None:
    record = TrackRecord(flat_threshold_pct=0.5)
    decision = Swarm([Fixed("h", Action.HOLD), Fixed("b", Action.BUY)]).decide([STATE])[0]
    record.update(decision, realized_return_pct=0.1)
    assert record.members["h"].correct == 1 and record.members["b"].correct == 0


def test_swarm_with_the_rule_based_baseline_agrees_with_it_when_alone() -> None:
    [alone] = RuleBased().decide([STATE])
    [d] = Swarm([RuleBased()], quorum=1.0).decide([STATE])
    assert d.action is alone.action


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="distinct names"):
        Swarm([Fixed("a"), Fixed("a")])
    with pytest.raises(ValueError, match="quorum"):
        Swarm([Fixed("a")], quorum=0)

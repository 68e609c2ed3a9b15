"""What the gate's intervals are worth (evidence for, against, or not enough either way, with each
interval's width and the decisions behind it), and its refusal of a degenerate model. The walk-forward
is small and built by hand: a challenger whose hourly returns are a baseline's plus an edge, on the same
bars, so the gate's own bootstrap decides the case."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crypto_pipeline.backtest.audits import AuditResult
from crypto_pipeline.backtest.gate import GateConfig, Interval, decide_promotion, overall_evidence
from crypto_pipeline.backtest.walkforward import FoldResult, WalkForwardReport
from crypto_pipeline.llm.behaviour import DecisionProfile
from crypto_pipeline.llm.decision import parse_decision

PASSING = [AuditResult("truncation", True, "ok")]
STUCK = '{"action": "HOLD", "confidence": 100, "reasoning": "Upside edge: 50:50:50:50"}'
FIGURES = {  # the challenger's stored decision figures: 40 varied decisions
    "decisions": 40,
    "invalid_rate": 0.0,
    "buy_share": 0.3,
    "sell_share": 0.3,
    "hold_share": 0.4,
    "mean_confidence": 61.0,
    "distinct_reasoning_share": 0.8,
    "top_reasoning_share": 0.1,
}


def _report(edge: float, bars: int = 336, seed: int = 0) -> WalkForwardReport:
    index = pd.date_range("2024-08-24", periods=bars, freq="h", tz="UTC")
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 0.004, bars)
    ours = base + edge + rng.normal(0.0, 0.001, bars)
    return WalkForwardReport(
        [],
        [
            FoldResult("buy_hold", "fold-00", {}, pd.Series(base, index)),
            FoldResult("challenger", "fold-00", {}, pd.Series(ours, index), dict(FIGURES)),
        ],
    )


def test_each_case_of_evidence_is_said_with_the_width_and_the_decisions_behind_it() -> None:
    ahead = decide_promotion(_report(0.002), "challenger", audits=PASSING)
    assert ahead.promoted and ahead.evidence == "for" and ahead.decisions == 40
    [interval] = ahead.intervals
    assert interval.label == "best baseline buy_hold" and interval.bars == 336 and interval.decisions == 40
    assert interval.lo > 0 and interval.width == pytest.approx(interval.hi - interval.lo)
    assert any(
        r.startswith("evidence: for the challenger")
        and f"width {interval.width:.2f}" in r
        and "40 decisions" in r
        for r in ahead.reasons
    )

    behind = decide_promotion(_report(-0.002), "challenger", audits=PASSING)
    assert not behind.promoted and behind.evidence == "against" and behind.intervals[0].hi < 0
    assert any(r.startswith("evidence: against the challenger") for r in behind.reasons)

    # 24 hours of no edge: the interval straddles 0, and a "not promoted" says nothing either way.
    unsure = decide_promotion(_report(0.0, bars=24), "challenger", audits=PASSING)
    assert not unsure.promoted and unsure.evidence == "insufficient"
    assert unsure.intervals[0].lo < 0 < unsure.intervals[0].hi
    assert any("not enough either way" in r and "says nothing" in r for r in unsure.reasons)
    assert any("(width " in r and "; evidence insufficient): fail" in r for r in unsure.reasons)


def test_the_overall_evidence_needs_every_interval_above_zero_and_one_below_is_against() -> None:
    above, below, across = (
        Interval("r", "r", lo, hi, 7, 316) for lo, hi in ((0.1, 2), (-3, -0.2), (-3.37, 13.86))
    )
    assert (above.evidence, below.evidence, across.evidence) == ("for", "against", "insufficient")
    assert across.width == pytest.approx(17.23)
    assert overall_evidence([above]) == "for" and overall_evidence([above, across]) == "insufficient"
    assert overall_evidence([above, below]) == "against" and overall_evidence([]) == "insufficient"
    # Too few bars for an interval: NaN, not evidence.
    assert Interval("r", "r", float("nan"), float("nan"), 3, 5).evidence == "insufficient"


def test_the_gate_refuses_a_degenerate_model_and_says_why() -> None:
    report = _report(0.002)
    stuck = DecisionProfile.of([parse_decision(STUCK)] * 178)
    refused = decide_promotion(report, "challenger", audits=PASSING, profile=stuck)
    assert not refused.promoted and refused.evidence == "for"  # it beat the baseline, and is still refused
    assert refused.degenerate == [
        "answered HOLD to 178 of 178 decisions (100%) out of sample",
        "one reasoning sentence for 100% of decisions ('Upside edge: 50:50:50:50') out of sample",
    ]
    assert "degenerate: answered HOLD to 178 of 178 decisions (100%) out of sample: fail" in refused.reasons
    assert refused.figures["profile_share_hold"] == 1.0 and refused.profile == stuck
    # On paper too, the same decisions refuse it.
    on_paper = decide_promotion(report, "challenger", audits=PASSING, paper_profile=stuck)
    assert not on_paper.promoted and on_paper.degenerate[0].endswith("on paper")
    # Its stored figures (40 varied decisions, the default profile) pass, said as such.
    passed = decide_promotion(report, "challenger", audits=PASSING)
    assert passed.promoted and passed.profile is not None and passed.profile.n == 40
    assert any(
        r.startswith("decisions out of sample: not degenerate") and r.endswith("pass") for r in passed.reasons
    )
    # Too few to tell: said, not judged.
    few = decide_promotion(
        report, "challenger", audits=PASSING, profile=DecisionProfile.of([parse_decision(STUCK)] * 7)
    )
    assert few.promoted and not few.degenerate
    assert any("7 are too few (fewer than 20)" in r and "not judged" in r for r in few.reasons)
    loose = GateConfig(max_action_share=1.0, max_top_reasoning_share=1.0)
    assert decide_promotion(report, "challenger", audits=PASSING, profile=stuck, config=loose).promoted

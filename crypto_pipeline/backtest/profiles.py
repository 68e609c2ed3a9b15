"""Each decision provider's `DecisionProfile` (llm/behaviour.py) in a walk-forward: action shares, mean
confidence and reasoning variety per policy (each LLM version, the rules), for the reports and the gate.

Exact when the report holds the runs (a walk-forward just run) or when the warehouse's journal holds the
runs' decisions (`llm_backtests` journals each LLM fold as `backtest-<policy>-<fold>`); from stored
per-fold figures otherwise (`DecisionProfile.pooled`: exact for one fold, reasoning bounded for more)."""

from __future__ import annotations

import math

import polars as pl

from crypto_pipeline.backtest.walkforward import FoldResult, WalkForwardReport
from crypto_pipeline.journal.summary import journal_profile
from crypto_pipeline.llm.behaviour import ACTIONS, DecisionProfile
from crypto_pipeline.warehouse import Warehouse


def journal_run_id(policy: str, fold: str) -> str:
    """The run id `llm_backtests` journals a provider's fold under."""
    return f"backtest-{policy}-{fold}"


def fold_profile(result: FoldResult) -> DecisionProfile | None:
    """One fold's profile: from its run's decisions, else from its stored figures (the reasoning figures
    are NaN in results stored before they were kept). None for a signal baseline."""
    if result.run is not None:
        return DecisionProfile.of(result.run.decisions)
    llm = result.llm
    if "decisions" not in llm:
        return None
    return DecisionProfile(
        n=int(llm["decisions"]),
        shares={a: float(llm.get(f"{a.lower()}_share", 0.0)) for a in ACTIONS},
        mean_confidence=float(llm.get("mean_confidence", 0.0)),
        distinct_reasoning_share=float(llm.get("distinct_reasoning_share", math.nan)),
        top_reasoning_share=float(llm.get("top_reasoning_share", math.nan)),
        invalid_rate=float(llm.get("invalid_rate", 0.0)),
    )


def policy_profile(
    report: WalkForwardReport, policy: str, warehouse: Warehouse | None = None
) -> DecisionProfile | None:
    """`policy`'s decisions over every fold it ran in `report` (None when it is not a provider)."""
    rows = [r for r in report.results if r.policy == policy]
    if not rows or all(r.run is None and "decisions" not in r.llm for r in rows):
        return None
    if all(r.run is not None for r in rows):
        return DecisionProfile.of([d for r in rows for d in r.run.decisions])  # type: ignore[union-attr]
    if warehouse is not None:
        found = journal_profile(warehouse, [journal_run_id(policy, r.fold) for r in rows])
        if found is not None and found.n == sum(int(r.llm.get("decisions", 0)) for r in rows):
            return found
    return DecisionProfile.pooled([p for r in rows if (p := fold_profile(r)) is not None])


def policy_profiles(
    report: WalkForwardReport, warehouse: Warehouse | None = None
) -> dict[str, DecisionProfile]:
    """Every decision provider of `report` (the LLM versions, the rules) and its profile."""
    found = {p: policy_profile(report, p, warehouse) for p in report.policies()}
    return {p: profile for p, profile in found.items() if profile is not None}


def profiles_table(profiles: dict[str, DecisionProfile]) -> pl.DataFrame:
    """One row per policy: decisions, action shares, mean confidence, reasoning variety, invalid rate."""
    rows = [
        {"policy": policy, "decisions": p.n, **p.as_metrics(), "invalid_rate": p.invalid_rate}
        for policy, p in profiles.items()
    ]
    schema = {"policy": pl.String, "decisions": pl.Int64}
    schema |= {k: pl.Float64 for k in DecisionProfile.from_columns([], [], []).as_metrics()}
    return pl.DataFrame(rows, schema=schema | {"invalid_rate": pl.Float64})


def profile_lines(profiles: dict[str, DecisionProfile], min_decisions: int = 20) -> list[str]:
    """One line per policy: its profile in words, and whether it is degenerate (or too few to tell)."""
    lines = []
    for policy, profile in profiles.items():
        degenerate = profile.degenerate_reasons(min_decisions=min_decisions)
        if degenerate:
            verdict = "degenerate: " + "; ".join(degenerate)
        elif profile.n < min_decisions:
            verdict = f"too few decisions (fewer than {min_decisions}) to tell whether it is degenerate"
        else:
            verdict = "not degenerate"
        lines.append(f"{policy}: {profile.describe()}; {verdict}")
    return lines

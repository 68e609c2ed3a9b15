"""The promotion gate on a real walk-forward, recorded in a real (sqlite) MLflow registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from crypto_pipeline.backtest.audits import AuditResult
from crypto_pipeline.backtest.gate import GateConfig, decide_promotion, record_in_mlflow
from crypto_pipeline.backtest.walkforward import WalkForwardConfig, walk_forward
from crypto_pipeline.llm.rule_based import RuleBased

pytestmark = pytest.mark.requires_data("binance-spot-2024")


@pytest.fixture(scope="module")
def report():  # noqa: ANN201
    config = WalkForwardConfig(
        symbols=("BTC/USDT", "ETH/USDT"), start="2024-01-01", end="2024-04-01", n_folds=2, test_days=10
    )
    return walk_forward(
        config, signal_policies=("buy_hold", "ema_cross"), providers={"challenger": RuleBased()}
    )


PASSING = [AuditResult("truncation", True, "ok")]


def test_the_gate_promotes_only_what_beats_the_best_baseline(report) -> None:  # noqa: ANN001
    verdict = decide_promotion(report, "challenger", audits=PASSING)
    assert verdict.reasons and any("best baseline" in r for r in verdict.reasons)
    # An impossible margin always fails; a failed audit always fails.
    assert not decide_promotion(
        report, "challenger", audits=PASSING, config=GateConfig(sharpe_margin=1e6)
    ).promoted
    failed = decide_promotion(report, "challenger", audits=[AuditResult("truncation", False, "leak")])
    assert not failed.promoted and any("FAIL" in r for r in failed.reasons)
    assert not decide_promotion(report, "challenger", audits=()).promoted
    assert not decide_promotion(report, "nobody", audits=PASSING).promoted


def test_the_verdict_and_reasons_are_recorded_and_the_alias_moves_only_on_promotion(
    report, tmp_path: Path
) -> None:  # noqa: ANN001
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", registry_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"
    )
    client.create_registered_model("crypto-policy")
    v1 = client.create_model_version("crypto-policy", source=str(tmp_path)).version
    v2 = client.create_model_version("crypto-policy", source=str(tmp_path)).version
    client.set_registered_model_alias("crypto-policy", "champion", v1)
    refused = decide_promotion(report, "challenger", audits=[AuditResult("truncation", False, "leak")])
    out = record_in_mlflow(client, "crypto-policy", v2, refused)
    assert out == {**out, "promoted": False, "champion_before": v1, "champion_after": v1}
    assert client.get_model_version_by_alias("crypto-policy", "champion").version == v1
    tags = client.get_model_version("crypto-policy", v2).tags
    assert tags["gate.promoted"] == "false" and any(
        "FAIL" in v for k, v in tags.items() if k.startswith("gate.reason")
    )
    assert tags["gate.evidence"] == out["evidence"] == refused.evidence
    assert tags["gate.decisions"] == str(out["decisions"]) == str(refused.decisions)
    assert out["intervals"] == [i.as_dict() for i in refused.intervals] and out["profile"]["decisions"] > 0
    forced = refused.__class__(True, "challenger", ["all pass"])
    out = record_in_mlflow(client, "crypto-policy", v2, forced)
    assert (
        out["champion_after"] == v2 == client.get_model_version_by_alias("crypto-policy", "champion").version
    )
    del mlflow


def test_rivals_are_judged_on_exactly_the_challengers_bars() -> None:
    """`make run`'s old failure: the LLM decided on BTC/USDT only, the baselines ran on BTC, ETH and
    SOL, and BTC lacks 20 hours of 2024-08-24..09-07 that SOL has (316 bars against 336). Rivals run on
    the challenger's own ground compare on identical windows; rivals on other symbols are refused with
    that reason, never compared on another market."""
    from crypto_pipeline.backtest.gate import comparison_windows
    from crypto_pipeline.backtest.walkforward import WalkForwardReport

    ground = WalkForwardConfig(symbols=("BTC/USDT",), start="2024-06-01", decision_every_hours=48)
    fold = ground.folds()[-1]
    baselines = ("buy_hold", "ema_cross")
    same = walk_forward(
        ground, signal_policies=baselines, providers={"challenger": RuleBased()}, folds=[fold]
    )
    windows = comparison_windows(same, "challenger", baselines)
    assert len(windows["challenger"]) == 316
    assert all(w.equals(windows["challenger"]) for w in windows.values())
    verdict = decide_promotion(same, "challenger", audits=PASSING)
    assert any("vs best baseline" in r and "difference CI" in r for r in verdict.reasons)
    assert not any("same ground" in r for r in verdict.reasons)

    wider = walk_forward(
        WalkForwardConfig(symbols=("BTC/USDT", "SOL/USDT"), start="2024-06-01"),
        signal_policies=baselines,
        folds=[fold],
    )
    mixed = WalkForwardReport([fold], [r for r in same.results if r.policy == "challenger"] + wider.results)
    windows = comparison_windows(mixed, "challenger", baselines)
    assert {len(w) for p, w in windows.items() if p != "challenger"} == {336}
    refused = decide_promotion(mixed, "challenger", audits=PASSING, config=GateConfig(sharpe_margin=-1e6))
    assert not refused.promoted
    assert any("not the same ground, fail" in r and "(20 bars differ)" in r for r in refused.reasons)


def test_the_forward_paper_record_counts_once_there_is_enough_of_it(report) -> None:  # noqa: ANN001
    from crypto_pipeline.journal.summary import PaperRecord

    without = decide_promotion(report, "challenger", audits=PASSING).promoted
    few = PaperRecord("3", ["s1-shadow-v3"], 40, -0.10, 0.05)
    verdict = decide_promotion(report, "challenger", audits=PASSING, paper=few)
    assert verdict.promoted == without  # 40 decisions say little: said, not counted
    assert any("40 decisions in 1 live run(s)" in r and "not enough to count" in r for r in verdict.reasons)
    trailing = PaperRecord("3", ["s1-shadow-v3", "s2-shadow-v3"], 400, -0.10, 0.05)
    refused = decide_promotion(report, "challenger", audits=PASSING, paper=trailing)
    assert not refused.promoted
    assert any("return -10.00% vs buy-and-hold +5.00%: fail" in r for r in refused.reasons)
    ahead = PaperRecord("3", ["s1"], 400, 0.08, 0.05)
    passed = decide_promotion(report, "challenger", audits=PASSING, paper=ahead)
    assert passed.promoted == without and any(
        "+8.00% vs buy-and-hold +5.00%: pass" in r for r in passed.reasons
    )


def test_the_gate_judges_the_challengers_own_decisions_from_runs_stored_figures_or_the_journal(
    report, tmp_path: Path
) -> None:  # noqa: ANN001
    from crypto_pipeline.backtest.gate import overall_evidence
    from crypto_pipeline.backtest.journaling import journal_policy_run
    from crypto_pipeline.backtest.profiles import journal_run_id, policy_profile, policy_profiles
    from crypto_pipeline.backtest.walkforward import load_fold_results, save_fold_results
    from crypto_pipeline.llm.behaviour import DecisionProfile
    from crypto_pipeline.warehouse import Warehouse

    runs = [r for r in report.results if r.policy == "challenger"]
    exact = DecisionProfile.of([d for r in runs for d in r.run.decisions])
    verdict = decide_promotion(report, "challenger", audits=PASSING)
    assert verdict.profile == exact and verdict.decisions == exact.n > 0
    assert verdict.evidence == overall_evidence(verdict.intervals) and len(verdict.intervals) == 1
    assert any(r.startswith(f"evidence: {verdict.evidence}") for r in verdict.reasons)
    assert any(r.startswith("decisions out of sample: ") for r in verdict.reasons)
    # As the Dagster assets keep them: per-fold figures only (2 folds: the reasoning is bounded).
    save_fold_results(report.results, tmp_path / "folds")
    stored = load_fold_results(tmp_path / "folds", report.folds)
    assert set(policy_profiles(stored)) == {"challenger"}  # the signal baselines decide nothing
    pooled = policy_profile(stored, "challenger")
    assert pooled.n == exact.n and pooled.shares == pytest.approx(exact.shares)
    assert pooled.mean_confidence == pytest.approx(exact.mean_confidence)
    assert pooled.top_reasoning_share <= exact.top_reasoning_share
    # With the folds journaled (as `llm_backtests` does), exact again.
    warehouse = Warehouse(tmp_path / "wh")
    for r in runs:
        journal_policy_run(warehouse, journal_run_id("challenger", r.fold), r.run)
    journaled = policy_profile(stored, "challenger", warehouse)
    assert journaled.n == exact.n and journaled.as_metrics() == pytest.approx(exact.as_metrics())
    assert journaled.top_reasoning == exact.top_reasoning

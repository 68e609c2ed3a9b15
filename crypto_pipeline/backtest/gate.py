"""The promotion gate: the challenger becomes MLflow's `champion` only if, out of sample, it beats the
current champion (if any) and the best baseline on Sharpe by a margin with the bootstrap interval of
the difference above zero, its invalid-output rate stays under 0.1%, its drawdown stays within the risk
limit, its decisions are not degenerate (one action or one reasoning sentence nearly always), and every
audit passes. Otherwise the champion stays. Every reason is recorded.

The verdict also says what the intervals are worth: `evidence` is "for" (every Sharpe-difference
interval entirely above 0), "against" (one entirely below 0) or "insufficient" (an interval straddles 0:
"not promoted" then says nothing either way), with each interval's width and the decisions behind it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from crypto_pipeline.backtest import metrics as m
from crypto_pipeline.backtest.audits import AuditResult
from crypto_pipeline.backtest.cache import DecisionCache
from crypto_pipeline.backtest.profiles import policy_profile
from crypto_pipeline.backtest.run import llm_policy_name
from crypto_pipeline.backtest.walkforward import (
    MarketData,
    WalkForwardConfig,
    WalkForwardReport,
    walk_forward,
)
from crypto_pipeline.config import get_settings
from crypto_pipeline.errors import UserInputError
from crypto_pipeline.journal.summary import PaperRecord, journal_profile, paper_record
from crypto_pipeline.llm.behaviour import DecisionProfile
from crypto_pipeline.llm.rule_based import RuleBased
from crypto_pipeline.registry import CHALLENGER, CHAMPION, MODEL_NAME, client, make_provider, resolve
from crypto_pipeline.timeutil import as_utc
from crypto_pipeline.warehouse import Warehouse

BASELINES = ("buy_hold", "ema_cross", "rsi", "lgbm", "rules")


@dataclass(frozen=True)
class GateConfig:
    sharpe_margin: float = 0.1
    max_invalid_rate: float = 0.001
    max_drawdown: float = 0.20  # the risk engine's default kill-switch level
    reps: int = 500
    # Forward evidence counts once a version has decided this often on paper (trading or in shadow).
    min_paper_decisions: int = 200
    # Degenerate decisions (`DecisionProfile.degenerate_reasons`): one action above this share, or one
    # reasoning sentence above that one, once there are enough decisions to tell.
    max_action_share: float = 0.95
    max_top_reasoning_share: float = 0.9
    min_profile_decisions: int = 20


EVIDENCE = ("for", "against", "insufficient")


@dataclass(frozen=True)
class Interval:
    """One Sharpe-difference interval the gate judged: the challenger minus `rival`, on `bars` bars and
    the challenger's `decisions` decisions behind it."""

    label: str  # "best baseline rules", "champion llm:2"
    rival: str
    lo: float
    hi: float
    decisions: int
    bars: int

    @property
    def width(self) -> float:
        return self.hi - self.lo

    @property
    def evidence(self) -> str:
        """What this interval says: "for" the challenger (entirely above 0), "against" it (entirely below
        0), else "insufficient" (it straddles 0, or is NaN: too few bars)."""
        return "for" if self.lo > 0 else "against" if self.hi < 0 else "insufficient"

    def describe(self) -> str:
        return (
            f"vs {self.label} [{self.lo:.2f}, {self.hi:.2f}] (width {self.width:.2f}, "
            f"{self.decisions} decisions, {self.bars} bars)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "rival": self.rival,
            "lo": self.lo,
            "hi": self.hi,
            "width": self.width,
            "decisions": self.decisions,
            "bars": self.bars,
            "evidence": self.evidence,
        }


def overall_evidence(intervals: Sequence[Interval]) -> str:
    """The gate's evidence: "against" if any interval lies below 0, "for" if every one lies above 0 (and
    there is one), otherwise "insufficient"."""
    if any(i.evidence == "against" for i in intervals):
        return "against"
    if intervals and all(i.evidence == "for" for i in intervals):
        return "for"
    return "insufficient"


def evidence_line(evidence: str, intervals: Sequence[Interval], decisions: int) -> str:
    """The evidence verdict in words, with each interval, its width and the decisions behind it."""
    shown = (
        "; ".join(i.describe() for i in intervals) or f"no interval could be computed ({decisions} decisions)"
    )
    if evidence == "for":
        return f"evidence: for the challenger (every Sharpe-difference interval above 0): {shown}"
    if evidence == "against":
        return f"evidence: against the challenger (a Sharpe-difference interval below 0): {shown}"
    return (
        "evidence: insufficient, not enough either way (no Sharpe-difference interval wholly above or "
        f"below 0): {shown}; a 'not promoted' says nothing about the challenger"
    )


@dataclass
class GateDecision:
    promoted: bool
    challenger: str
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    evidence: str = "insufficient"  # "for" | "against" | "insufficient" (`overall_evidence`)
    decisions: int = 0  # the challenger's decisions behind the intervals
    intervals: list[Interval] = field(default_factory=list)
    profile: DecisionProfile | None = None  # the challenger's out-of-sample decisions
    degenerate: list[str] = field(default_factory=list)  # why its decisions are degenerate, if they are


def _stitched(report: WalkForwardReport, policy: str, folds: set[str]) -> pd.Series:
    parts = [r.returns for r in report.results if r.policy == policy and r.fold in folds]
    return pd.concat(parts).sort_index() if parts else pd.Series(dtype=float)


def comparison_windows(
    report: WalkForwardReport, challenger: str, rivals: Sequence[str]
) -> dict[str, pd.DatetimeIndex]:
    """The bars each policy is judged on: the challenger's stitched out-of-sample bars over its folds,
    and each rival's over the same folds. The gate compares only policies whose bars are identical."""
    folds = {r.fold for r in report.results if r.policy == challenger}
    return {p: pd.DatetimeIndex(_stitched(report, p, folds).index) for p in (challenger, *rivals)}


def decide_promotion(
    report: WalkForwardReport,
    challenger: str,
    *,
    champion: str | None = None,
    audits: Sequence[AuditResult] = (),
    config: GateConfig = GateConfig(),
    paper: PaperRecord | None = None,
    profile: DecisionProfile | None = None,
    paper_profile: DecisionProfile | None = None,
) -> GateDecision:
    """Judge `challenger` (a policy name in `report`) against the best baseline and `champion`, on the
    folds the challenger ran. Every rival must have run on exactly the challenger's bars (the same
    symbols, folds and decision times: `comparison_windows`); one that did not fails the gate with
    that reason rather than being compared on another market.

    `profile` is what the challenger's out-of-sample decisions look like (default: from `report`,
    `profiles.policy_profile`), `paper_profile` its forward (paper) decisions' (default: not judged);
    either one degenerate (`DecisionProfile.degenerate_reasons` with the config's thresholds) fails."""
    policies = report.policies()
    if challenger not in policies:
        return GateDecision(False, challenger, [f"no out-of-sample results for {challenger}"])
    folds = {r.fold for r in report.results if r.policy == challenger}
    ours = report.stitched(challenger)
    ppy = m.periods_per_year(ours.index)
    sharpe = m.sharpe(ours.to_numpy(), ppy)
    reasons: list[str] = [
        f"out of sample: {len(folds)} fold(s) ({', '.join(sorted(folds))}), {len(ours)} bars"
    ]
    ok = True
    baselines = [
        p for p in policies if p in BASELINES and {r.fold for r in report.results if r.policy == p} >= folds
    ]
    rivals = {}
    if baselines:
        best = max(baselines, key=lambda p: m.sharpe(_stitched(report, p, folds).to_numpy(), ppy))
        rivals[f"best baseline {best}"] = best
    else:
        ok = False
        reasons.append("no baseline ran on the challenger's folds: fail")
    if champion:
        if champion in policies:
            rivals[f"champion {champion}"] = champion
        else:
            ok = False
            reasons.append(f"no out-of-sample results for the champion {champion}: fail")
    figures: dict[str, float] = {"sharpe": sharpe}
    rows = [r for r in report.results if r.policy == challenger]
    decisions = int(sum(r.llm.get("decisions", 0) for r in rows))
    intervals: list[Interval] = []
    for label, rival in rivals.items():
        stitched = _stitched(report, rival, folds)
        if not stitched.index.equals(ours.index):
            # Like for like or not at all: a rival on other symbols or bars would be judged on another
            # market. Callers run the rivals on the challenger's ground (`llm_backtests`, `promote`).
            ok = False
            reasons.append(
                f"{label} ran on {stitched.size} bars, the challenger on {ours.size} "
                f"({ours.index.symmetric_difference(stitched.index).size} bars differ): "
                "not the same ground, fail"
            )
            continue
        theirs = stitched.to_numpy()
        rival_sharpe = m.sharpe(theirs, ppy)
        lo, hi = m.sharpe_difference_ci(ours.to_numpy(), theirs, ppy, reps=config.reps)
        beats = sharpe >= rival_sharpe + config.sharpe_margin and lo > 0
        ok &= beats
        interval = Interval(label, rival, lo, hi, decisions, ours.size)
        intervals.append(interval)
        reasons.append(
            f"Sharpe {sharpe:.2f} vs {label} {rival_sharpe:.2f} (margin {config.sharpe_margin}), "
            f"difference CI [{lo:.2f}, {hi:.2f}] (width {interval.width:.2f}, {decisions} decisions, "
            f"{ours.size} bars; evidence {interval.evidence}): {'pass' if beats else 'fail'}"
        )
        figures[f"sharpe_diff_lo_{rival}"] = lo
        figures[f"sharpe_diff_hi_{rival}"] = hi
    evidence = overall_evidence(intervals)
    reasons.append(evidence_line(evidence, intervals, decisions))
    figures["decisions"] = decisions
    invalid = (
        sum(r.llm.get("invalid_rate", 0) * r.llm.get("decisions", 0) for r in rows) / decisions
        if decisions
        else 0.0
    )
    valid_ok = invalid < config.max_invalid_rate
    ok &= valid_ok
    reasons.append(
        f"invalid-output rate {invalid:.3%} (max {config.max_invalid_rate:.1%}): {'pass' if valid_ok else 'fail'}"
    )
    mdd = m.max_drawdown(np.concatenate([[1.0], np.cumprod(1 + ours.to_numpy())]))
    dd_ok = mdd <= config.max_drawdown
    ok &= dd_ok
    reasons.append(f"max drawdown {mdd:.1%} (limit {config.max_drawdown:.0%}): {'pass' if dd_ok else 'fail'}")
    if not audits:
        ok = False
        reasons.append("no leakage audits were run: fail")
    for audit in audits:
        ok &= audit.passed
        reasons.append(f"audit {audit.name}: {'pass' if audit.passed else 'FAIL'} ({audit.detail})")
    figures.update(invalid_rate=invalid, max_drawdown=mdd)
    profile = profile if profile is not None else policy_profile(report, challenger)
    degenerate = _judge_profile("out of sample", profile, config, reasons)
    if profile is not None:
        figures.update(profile_decisions=profile.n, **profile.as_metrics("profile_"))
    if paper_profile is not None:
        degenerate += _judge_profile("on paper", paper_profile, config, reasons)
    ok &= not degenerate
    if paper is not None:
        ok &= _judge_paper(paper, config, reasons, figures)
    return GateDecision(ok, challenger, reasons, figures, evidence, decisions, intervals, profile, degenerate)


def _judge_profile(
    where: str, profile: DecisionProfile | None, config: GateConfig, reasons: list[str]
) -> list[str]:
    """Say what the decisions `where` ("out of sample", "on paper") look like; return why they are
    degenerate (empty if they are not, or too few to tell)."""
    if profile is None or not profile.n:
        reasons.append(f"decisions {where}: none to judge the model's behaviour by")
        return []
    reasons.append(f"decisions {where}: {profile.describe()}")
    degenerate = [
        f"{r} {where}"
        for r in profile.degenerate_reasons(
            config.max_action_share, config.max_top_reasoning_share, config.min_profile_decisions
        )
    ]
    reasons += [f"degenerate: {r}: fail" for r in degenerate]
    if not degenerate and profile.n < config.min_profile_decisions:
        reasons.append(
            f"decisions {where}: {profile.n} are too few (fewer than {config.min_profile_decisions}) to tell "
            "whether the model is degenerate: not judged"
        )
    elif not degenerate:
        reasons.append(
            f"decisions {where}: not degenerate (no action above {config.max_action_share:.0%}, no reasoning "
            f"sentence above {config.max_top_reasoning_share:.0%}): pass"
        )
    return degenerate


def _judge_paper(
    paper: PaperRecord, config: GateConfig, reasons: list[str], figures: dict[str, float]
) -> bool:
    """The forward record from live sessions (shadow books included): said always; once there is enough
    of it, the version must not trail buy-and-hold there."""
    figures["paper_decisions"] = paper.decisions
    if not paper.runs:
        reasons.append(f"{paper.describe()} (it counts from {config.min_paper_decisions} decisions)")
        return True
    if paper.decisions < config.min_paper_decisions:
        reasons.append(
            f"{paper.describe()}: fewer than {config.min_paper_decisions} decisions, not enough to count"
        )
        return True
    if paper.compounded_return is None or paper.compounded_buy_and_hold is None:
        reasons.append(f"{paper.describe()}: no equity or prices to judge it by, not counted")
        return True
    beats = paper.compounded_return >= paper.compounded_buy_and_hold
    reasons.append(f"{paper.describe()}: {'pass' if beats else 'fail'} (must not trail buy-and-hold)")
    return beats


def record_in_mlflow(
    client: Any, model_name: str, version: str, decision: GateDecision, *, alias: str = "champion"
) -> dict[str, Any]:
    """Tag the challenger version with the verdict and every reason; move `alias` only if promoted.
    `client` is an `mlflow.MlflowClient`. Returns champion before/after."""
    try:
        before = client.get_model_version_by_alias(model_name, alias).version
    except Exception:  # noqa: BLE001 - no champion yet
        before = None
    client.set_model_version_tag(model_name, version, "gate.promoted", str(decision.promoted).lower())
    client.set_model_version_tag(model_name, version, "gate.evidence", decision.evidence)
    client.set_model_version_tag(model_name, version, "gate.decisions", str(decision.decisions))
    for i, reason in enumerate(decision.reasons):
        client.set_model_version_tag(model_name, version, f"gate.reason.{i:02d}", reason[:5000])
    if decision.promoted:
        client.set_registered_model_alias(model_name, alias, version)
    return {
        "promoted": decision.promoted,
        "challenger": version,
        "champion_before": before,
        "champion_after": version if decision.promoted else before,
        "reasons": decision.reasons,
        "evidence": decision.evidence,
        "decisions": decision.decisions,
        "intervals": [i.as_dict() for i in decision.intervals],
        "profile": (
            {
                "decisions": decision.profile.n,
                **decision.profile.as_metrics(),
                "invalid_rate": decision.profile.invalid_rate,
            }
            if decision.profile is not None
            else None
        ),
        "degenerate": decision.degenerate,
    }


def promote(
    challenger_ref: str = CHALLENGER,
    *,
    settings: Any = None,
    config: Any = None,
    gate: GateConfig = GateConfig(),
    audit_samples: int = 2,
) -> dict[str, Any]:
    """Run the gate on a registered version (a number or an alias, default `challenger`): walk-forward
    of the challenger, the champion (if any), RuleBased and the signal baselines on the folds after both
    models' training cutoffs, the decisions from the warehouse's decision cache where it has them, the
    three leakage audits on the challenger, then record the verdict. A missing version is a
    UserInputError (nothing is written); no fold after the cutoff is an honest refusal."""
    settings = settings or get_settings()
    found = resolve(challenger_ref, settings)
    mlflow_client = client(settings.mlflow_tracking_uri)
    try:
        champion = resolve(CHAMPION, settings)
    except UserInputError:  # no champion yet
        champion = None
    if champion is not None and champion.version == found.version:
        champion = None  # re-judging the champion: judge it against the baselines only
    config = config or WalkForwardConfig(
        decision_every_hours=12, test_days=7, data_dir=settings.market_data_dir
    )
    data = MarketData.load(config)  # unknown symbols, no bars: an error before anything is recorded
    cutoffs = [m.training_cutoff for m in (found, champion) if m is not None and m.training_cutoff]
    cutoff = max(cutoffs) if cutoffs else None
    every = config.folds()  # folds that do not fit the range: a UserInputError, nothing recorded
    after = config.folds(training_cutoff=cutoff)
    held = data.bars["timestamp"]
    folds = [f for f in after if not held.filter((held >= f.test_start) & (held < f.test_end)).is_empty()]
    ours = llm_policy_name(found.version)
    if after and not folds:  # test windows past the data's end: nothing recorded, the span is wrong
        raise UserInputError(
            f"no test window of {as_utc(config.start):%Y-%m-%d}..{as_utc(config.end):%Y-%m-%d} after the training "
            f"cutoff holds bars in {config.data_dir}: end the span inside the data"
        )
    if not folds:
        gap = timedelta(hours=config.purge_hours + config.embargo_hours)
        whose = "the challenger's" if cutoff == found.training_cutoff else "the champion's"
        decision = GateDecision(
            False,
            ours,
            [
                f"no walk-forward fold of {as_utc(config.start):%Y-%m-%d %H:%M}..{as_utc(config.end):%Y-%m-%d %H:%M} "
                f"starts after {whose} training cutoff {cutoff:%Y-%m-%d %H:%M} + purge and embargo ({gap}): the "
                f"latest test window starts {every[-1].test_start:%Y-%m-%d %H:%M}, the earliest allowed is "
                f"{cutoff + gap:%Y-%m-%d %H:%M}; nothing out of sample to judge: not promoted"
            ],
        )
        out = record_in_mlflow(mlflow_client, MODEL_NAME, found.version, decision)
        out["refused"] = True
        out["table"] = []
        return out
    providers = {ours: make_provider(f"llm:{found.version}", settings).provider, "rules": RuleBased()}
    theirs = None
    if champion is not None:
        theirs = llm_policy_name(champion.version)
        providers[theirs] = make_provider(f"llm:{champion.version}", settings).provider
    cache = DecisionCache(Warehouse(settings.warehouse_dir))
    report = walk_forward(
        config,
        providers=providers,
        cache=cache,
        folds=folds,
        data=data,
        audited=(ours,),
        audit_samples=audit_samples,
    )
    warehouse = Warehouse(settings.warehouse_dir)
    paper = paper_record(warehouse, found.version)
    decision = decide_promotion(
        report,
        ours,
        champion=theirs,
        audits=report.audits(ours),
        config=gate,
        paper=paper,
        profile=policy_profile(report, ours),
        paper_profile=journal_profile(warehouse, paper.runs) if paper.runs else None,
    )
    out = record_in_mlflow(mlflow_client, MODEL_NAME, found.version, decision)
    out["table"] = report.table().to_dicts()
    return out

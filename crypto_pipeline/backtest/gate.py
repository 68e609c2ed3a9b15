"""The promotion gate: the challenger becomes MLflow's `champion` only if, out of sample, it beats the
current champion (if any) and the best baseline on Sharpe by a margin with the bootstrap interval of
the difference above zero, its invalid-output rate stays under 0.1%, its drawdown stays within the risk
limit, and every audit passes. Otherwise the champion stays. Every reason is recorded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crypto_pipeline.backtest import metrics as m
from crypto_pipeline.backtest.audits import AuditResult
from crypto_pipeline.backtest.walkforward import WalkForwardReport

BASELINES = ("buy_hold", "ema_cross", "rsi", "lgbm", "rules")


@dataclass(frozen=True)
class GateConfig:
    sharpe_margin: float = 0.1
    max_invalid_rate: float = 0.001
    max_drawdown: float = 0.20  # the risk engine's default kill-switch level
    reps: int = 500


@dataclass
class GateDecision:
    promoted: bool
    challenger: str
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)


def decide_promotion(
    report: WalkForwardReport,
    challenger: str,
    *,
    champion: str | None = None,
    audits: Sequence[AuditResult] = (),
    config: GateConfig = GateConfig(),
) -> GateDecision:
    """Judge `challenger` (a policy name in `report`) against the best baseline and `champion`."""
    policies = report.policies()
    if challenger not in policies:
        return GateDecision(False, challenger, [f"no out-of-sample results for {challenger}"])
    ours = report.stitched(challenger)
    ppy = m.periods_per_year(ours.index)
    sharpe = m.sharpe(ours.to_numpy(), ppy)
    reasons: list[str] = []
    ok = True
    baselines = [p for p in policies if p in BASELINES]
    rivals = {}
    if baselines:
        best = max(baselines, key=lambda p: m.sharpe(report.stitched(p).to_numpy(), ppy))
        rivals[f"best baseline {best}"] = best
    if champion and champion in policies:
        rivals[f"champion {champion}"] = champion
    figures: dict[str, float] = {"sharpe": sharpe}
    for label, rival in rivals.items():
        theirs = report.stitched(rival).to_numpy()
        rival_sharpe = m.sharpe(theirs, ppy)
        lo, hi = m.sharpe_difference_ci(ours.to_numpy(), theirs, ppy, reps=config.reps)
        beats = sharpe >= rival_sharpe + config.sharpe_margin and lo > 0
        ok &= beats
        reasons.append(
            f"Sharpe {sharpe:.2f} vs {label} {rival_sharpe:.2f} (margin {config.sharpe_margin}), "
            f"difference CI [{lo:.2f}, {hi:.2f}]: {'pass' if beats else 'fail'}"
        )
        figures[f"sharpe_diff_lo_{rival}"] = lo
    rows = [r for r in report.results if r.policy == challenger]
    decisions = sum(r.llm.get("decisions", 0) for r in rows)
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
    return GateDecision(ok, challenger, reasons, figures)


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
    }


def promote(
    challenger_ref: str = "challenger",
    *,
    settings: Any = None,
    config: Any = None,
    model_name: str = "crypto-policy",
) -> dict[str, Any]:
    """Run the gate on a registered version (a number or an alias, default `challenger`): walk-forward of
    the challenger, the champion (if any) and the baselines from the decision cache where it can, the
    truncation audit on a sample, then record the verdict. Raises UserInputError for a missing version."""
    from mlflow import MlflowClient

    from crypto_pipeline.backtest.audits import truncation_audit
    from crypto_pipeline.backtest.cache import DecisionCache
    from crypto_pipeline.backtest.run import make_provider
    from crypto_pipeline.backtest.walkforward import MarketData, WalkForwardConfig, walk_forward
    from crypto_pipeline.config import get_settings
    from crypto_pipeline.errors import UserInputError
    from crypto_pipeline.llm.rule_based import RuleBased

    settings = settings or get_settings()
    client = MlflowClient(
        tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri
    )
    try:
        version = (
            client.get_model_version(model_name, challenger_ref).version
            if challenger_ref.isdigit()
            else client.get_model_version_by_alias(model_name, challenger_ref).version
        )
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a missing version
        raise UserInputError(
            f"no version {challenger_ref!r} of {model_name}: {str(exc).splitlines()[0][:200]}"
        ) from None
    try:
        champion = client.get_model_version_by_alias(model_name, "champion").version
    except Exception:  # noqa: BLE001 - no champion yet
        champion = None
    config = config or WalkForwardConfig(
        decision_every_hours=12, test_days=7, data_dir=settings.market_data_dir
    )
    providers = {"challenger": make_provider(f"llm:{version}", settings), "rules": RuleBased()}
    if champion and champion != version:
        providers["champion"] = make_provider(f"llm:{champion}", settings)
    data = MarketData.load(config)
    cache = DecisionCache(settings.warehouse_dir / "decision_cache.parquet")
    report = walk_forward(config, providers=providers, cache=cache, data=data)
    samples = [(s, f.test_start) for f in report.folds for s in config.symbols][:4]
    audits = [truncation_audit(lambda _: providers["challenger"], {"1h": data.bars}, samples)]
    decision = decide_promotion(
        report, "challenger", champion="champion" if "champion" in providers else None, audits=audits
    )
    return record_in_mlflow(client, model_name, version, decision)

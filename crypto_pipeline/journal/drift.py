"""Drift of a live run from what the backtest expected, from the journal alone.

Backtests and live sessions journal decisions into the same `decisions` table, each under its own
`run_id`, with the `MarketState` the model saw. Comparing a live run with a reference run (the
walk-forward backtest of the model that trades) therefore needs no other source:
- the action mix (BUY / SELL / HOLD / invalid) by the population stability index (PSI);
- a few features of the states, each by PSI over the reference's deciles.
PSI above 0.25 is the usual "the population has shifted" mark; 0.1-0.25 is a moderate shift.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from crypto_pipeline.journal.writer import SHADOW_INFIX
from crypto_pipeline.market.schema import INGESTED_AT
from crypto_pipeline.warehouse import Warehouse

# Features of the state: "name" is a top-level field, "name@tf" an indicator of that timeframe.
DEFAULT_FEATURES = ("change_1h", "change_24h", "volume_vs_avg_7d", "rsi_14@1h", "atr_pct@1h")
ACTIONS = ("BUY", "SELL", "HOLD", "INVALID")
DEFAULT_THRESHOLD = 0.25
_EPS = 1e-4  # share given to an empty bin, so that PSI stays finite


def psi(
    expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, bins: int = 10
) -> float:
    """Population stability index of `actual` against `expected`, over `expected`'s quantile bins."""
    exp = np.asarray(expected, dtype=float)
    act = np.asarray(actual, dtype=float)
    exp, act = exp[np.isfinite(exp)], act[np.isfinite(act)]
    if exp.size == 0 or act.size == 0:
        return math.nan
    edges = np.unique(np.quantile(exp, np.linspace(0, 1, bins + 1)[1:-1]))
    exp_share = np.bincount(np.searchsorted(edges, exp, side="right"), minlength=edges.size + 1) / exp.size
    act_share = np.bincount(np.searchsorted(edges, act, side="right"), minlength=edges.size + 1) / act.size
    return _psi_of_shares(exp_share, act_share)


def share_psi(expected: dict[str, float], actual: dict[str, float]) -> float:
    """PSI between two categorical distributions (shares by category)."""
    keys = sorted(set(expected) | set(actual))
    return _psi_of_shares(
        np.array([expected.get(k, 0.0) for k in keys]), np.array([actual.get(k, 0.0) for k in keys])
    )


def _psi_of_shares(expected: np.ndarray, actual: np.ndarray) -> float:
    e, a = np.clip(expected, _EPS, None), np.clip(actual, _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def decision_frame(decisions: pl.DataFrame, features: Sequence[str] = DEFAULT_FEATURES) -> pl.DataFrame:
    """One row per journaled decision: `outcome` (the action, or INVALID) and each feature of its state."""
    rows = []
    for valid, action, state in decisions.select("valid", "action", "state").iter_rows():
        values = _state_features(state, features) if state else dict.fromkeys(features)
        rows.append({"outcome": action if valid else "INVALID", **values})
    schema = {"outcome": pl.Utf8, **dict.fromkeys(features, pl.Float64)}
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


def _state_features(state_json: str, features: Sequence[str]) -> dict[str, float | None]:
    state = json.loads(state_json)
    out: dict[str, float | None] = {}
    for name in features:
        field_name, _, timeframe = name.partition("@")
        source = ((state.get("timeframes") or {}).get(timeframe) or {}) if timeframe else state
        value = source.get(field_name)
        out[name] = float(value) if isinstance(value, int | float) else None
    return out


def outcome_shares(frame: pl.DataFrame) -> dict[str, float]:
    if frame.is_empty():
        return {}
    counts = frame["outcome"].value_counts()
    return {str(k): n / frame.height for k, n in counts.iter_rows()}


@dataclass
class DriftReport:
    live_run: str
    reference_run: str
    live_decisions: int
    reference_decisions: int
    action_psi: float
    feature_psi: dict[str, float]
    live_mix: dict[str, float]
    reference_mix: dict[str, float]
    threshold: float
    drifted: bool
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        worst = max(self.feature_psi.items(), key=lambda kv: -1 if math.isnan(kv[1]) else kv[1], default=None)
        text = (
            f"{self.live_run} vs {self.reference_run}: action PSI {self.action_psi:.3f}"
            + (f", largest feature PSI {worst[0]} {worst[1]:.3f}" if worst else "")
            + f" (threshold {self.threshold:g}; {self.live_decisions} vs {self.reference_decisions} decisions)"
        )
        return text + (": DRIFT - " + "; ".join(self.reasons) if self.drifted else ": no drift")


def compare(
    live: pl.DataFrame,
    reference: pl.DataFrame,
    *,
    live_run: str = "live",
    reference_run: str = "reference",
    threshold: float = DEFAULT_THRESHOLD,
    min_decisions: int = 20,
    features: Sequence[str] = DEFAULT_FEATURES,
) -> DriftReport:
    """Drift of `live` from `reference` (both `decision_frame`s). Too few decisions on either side
    says nothing: no drift, with that reason."""
    live_mix, ref_mix = outcome_shares(live), outcome_shares(reference)
    action = share_psi(ref_mix, live_mix) if live_mix and ref_mix else math.nan
    per_feature = {
        f: psi(reference[f].drop_nulls().to_numpy(), live[f].drop_nulls().to_numpy())
        for f in features
        if f in live.columns and f in reference.columns
    }
    reasons: list[str] = []
    enough = live.height >= min_decisions and reference.height >= min_decisions
    if not enough:
        reasons.append(f"too few decisions to judge ({live.height} live, {reference.height} reference)")
    else:
        if action > threshold:
            reasons.append(f"action mix PSI {action:.3f} > {threshold:g}")
        reasons += [f"{f} PSI {v:.3f} > {threshold:g}" for f, v in per_feature.items() if v > threshold]
    return DriftReport(
        live_run=live_run,
        reference_run=reference_run,
        live_decisions=live.height,
        reference_decisions=reference.height,
        action_psi=action,
        feature_psi=per_feature,
        live_mix=live_mix,
        reference_mix=ref_mix,
        threshold=threshold,
        drifted=enough and bool(reasons),
        reasons=reasons,
    )


# --- from the warehouse's journal -----------------------------------------------------------------
def journal_runs(warehouse: Warehouse) -> pl.DataFrame:
    """Every run in the decisions journal: run_id, decisions, first/last decision time, last written."""
    decisions = warehouse.read("decisions", columns=["run_id", "time", INGESTED_AT])
    if decisions.is_empty():
        return pl.DataFrame(schema={"run_id": pl.Utf8, "decisions": pl.UInt32})
    return (
        decisions.group_by("run_id")
        .agg(
            pl.len().alias("decisions"),
            pl.col("time").min().alias("first"),
            pl.col("time").max().alias("last"),
            pl.col(INGESTED_AT).max().alias("written"),
        )
        .sort("written")
    )


def pick_runs(
    runs: pl.DataFrame, reference_run: str | None = None, reference_prefix: str = "backtest"
) -> tuple[str | None, str | None]:
    """(live run, reference run) among `journal_runs`: the reference as given, else the newest run
    named `reference_prefix`...; the live run is the newest other one (the kill switch's own
    journal entries are no session, a shadow book is not the run that traded)."""
    ids = runs["run_id"].to_list() if not runs.is_empty() else []
    if reference_run is None:
        references = [r for r in ids if r.startswith(reference_prefix)]
        reference_run = references[-1] if references else None
    others = [
        r
        for r in ids
        if r != reference_run
        and not r.startswith((reference_prefix, "kill-switch"))
        and SHADOW_INFIX not in r
    ]
    return (others[-1] if others else None), (reference_run if reference_run in ids else None)


def journal_drift(
    warehouse: Warehouse,
    live_run: str,
    reference_run: str,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    min_decisions: int = 20,
    features: Sequence[str] = DEFAULT_FEATURES,
) -> DriftReport:
    """`compare` of two runs of the decisions journal."""
    decisions = warehouse.read("decisions", columns=["run_id", "valid", "action", "state"])
    frames = {
        run: decision_frame(decisions.filter(pl.col("run_id") == run), features)
        for run in (live_run, reference_run)
    }
    return compare(
        frames[live_run],
        frames[reference_run],
        live_run=live_run,
        reference_run=reference_run,
        threshold=threshold,
        min_decisions=min_decisions,
        features=features,
    )

"""The registered versions side by side, each figure with its interval: what `crypto-pipeline models`
prints. The figures are the metrics the training run logged under fixed names; a metric `M` with
`M_ci_low` and `M_ci_high` logged beside it is shown as "0.412 [0.371, 0.455]". Whatever a version's
run did not log is blank, so versions trained before a metric existed still display."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from crypto_pipeline.llm.behaviour import DecisionProfile
from crypto_pipeline.registry import MODEL_NAME, client
from crypto_pipeline.training.registry import list_versions

# (column, metric): shown with its interval where the run logged one.
INTERVAL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("val bal. acc. [CI]", "val_balanced_accuracy"),
    ("test bal. acc. [CI]", "test_balanced_accuracy"),
    ("val macro F1 [CI]", "val_macro_f1"),
    ("tuned - base val bal. acc. [CI]", "tuned_minus_base_val_balanced_accuracy"),
    # The paired interval the fine-tune's target is judged on (above 0: tuned beats base on test).
    ("tuned - base test bal. acc. [CI]", "tuned_minus_base_test_balanced_accuracy"),
)
# The references on the same validation sample; logreg's is the ceiling a small classifier reaches.
REFERENCE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("val valid JSON", "val_valid_json_rate"),
    ("base val bal. acc.", "base_val_balanced_accuracy"),
    ("majority val bal. acc.", "majority_val_balanced_accuracy"),
    ("rules val bal. acc.", "rules_val_balanced_accuracy"),
    ("logreg val bal. acc. (ceiling)", "logreg_val_balanced_accuracy"),
    ("logreg test bal. acc. (ceiling)", "logreg_test_balanced_accuracy"),
)
# How the tuned model answered on validation (`DecisionProfile.as_metrics("val_")`).
BEHAVIOUR_METRICS: tuple[str, ...] = tuple(DecisionProfile.from_columns([], [], []).as_metrics("val_"))
COLUMNS: tuple[str, ...] = (
    "version",
    "aliases",
    "training cutoff",
    "base model",
    *(c for c, _ in INTERVAL_COLUMNS),
    *(c for c, _ in REFERENCE_COLUMNS),
    "val BUY/SELL/HOLD",
    "val mean conf.",
    "val reasoning distinct / top",
)


def _number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def with_interval(metrics: Mapping[str, float], name: str, digits: int = 3) -> str:
    """`name` with its interval ("0.412 [0.371, 0.455]"), the value alone without one, "" if not logged."""
    value = _number(metrics.get(name))
    if value is None:
        return ""
    lo, hi = _number(metrics.get(f"{name}_ci_low")), _number(metrics.get(f"{name}_ci_high"))
    if lo is None or hi is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _shares(metrics: Mapping[str, float], prefix: str) -> str:
    shares = [_number(metrics.get(f"{prefix}share_{a}")) for a in ("buy", "sell", "hold")]
    return "" if any(s is None for s in shares) else "/".join(f"{s:.0%}" for s in shares)  # type: ignore[str-format]


def _percent(metrics: Mapping[str, float], name: str) -> str:
    value = _number(metrics.get(name))
    return "" if value is None else f"{value:.0%}"


def version_row(version: Mapping[str, Any], metrics: Mapping[str, float]) -> dict[str, str]:
    """One version's cells (`COLUMNS`): `version` as `training.registry.list_versions` gives it, `metrics`
    its run's."""
    distinct = _percent(metrics, "val_distinct_reasoning_share")
    top = _percent(metrics, "val_top_reasoning_share")
    confidence = _number(metrics.get("val_mean_confidence"))
    return {
        "version": str(version["version"]),
        "aliases": version.get("aliases") or "",
        "training cutoff": (version.get("training_cutoff") or "")[:16],
        "base model": version.get("base_model") or "",
        **{column: with_interval(metrics, name) for column, name in INTERVAL_COLUMNS},
        **{column: with_interval(metrics, name) for column, name in REFERENCE_COLUMNS},
        "val BUY/SELL/HOLD": _shares(metrics, "val_"),
        "val mean conf.": "" if confidence is None else f"{confidence:.1f}",
        "val reasoning distinct / top": f"{distinct} / {top}" if distinct and top else distinct or top,
    }


def version_rows(tracking_uri: str, model_name: str = MODEL_NAME) -> list[dict[str, str]]:
    """Every registered version of `model_name`, oldest first, as `version_row` cells."""
    mc = client(tracking_uri)
    rows = []
    for version in list_versions(tracking_uri, model_name).iter_rows(named=True):
        metrics = mc.get_run(version["run_id"]).data.metrics if version["run_id"] else {}
        rows.append(version_row(version, metrics))
    return rows

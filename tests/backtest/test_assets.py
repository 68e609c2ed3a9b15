"""The backtest assets materialize in process: a fold partition of the baselines, then the report."""

from __future__ import annotations

import dagster as dg
import pytest

pytestmark = pytest.mark.requires_data("binance-spot-2024")


def test_definitions_load_with_the_backtest_assets() -> None:
    from definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"baseline_backtests", "llm_backtests", "walk_forward_report"} <= keys


def test_baseline_fold_then_report(tmp_path, monkeypatch) -> None:
    import assets.backtest as mod

    monkeypatch.setattr(mod, "results_dir", lambda: tmp_path / "folds")
    config = {"symbols": ["BTC/USDT", "ETH/USDT"]}
    key = mod.FOLD_PARTITIONS.get_partition_keys()[-1]
    first = dg.materialize(
        [mod.baseline_backtests],
        partition_key=key,
        run_config={"ops": {"baseline_backtests": {"config": config}}},
    )
    assert first.success
    assert len(list((tmp_path / "folds").glob("*.metrics.parquet"))) == 5  # 4 baselines + rules
    report = dg.materialize(
        [mod.walk_forward_report],
        run_config={"ops": {"walk_forward_report": {"config": config}}},
        selection=[mod.walk_forward_report],
    )
    assert report.success
    meta = report.asset_materializations_for_node("walk_forward_report")[0].metadata
    assert meta["audits_passed"].value is True
    # The rules' decisions as a whole, from the stored fold figures: shares, confidence, reasoning variety.
    [rules] = meta["decision_profiles"].value.splitlines()
    assert rules.startswith("- rules: ") and "distinct reasoning" in rules and "degenerate" in rules
    assert "data:image/png;base64" in meta["equity_and_drawdowns"].value
    assert (tmp_path / "walk_forward.html").exists()

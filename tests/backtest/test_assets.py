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


def test_llm_backtests_runs_a_range_of_folds_in_one_run_with_one_call_per_step(tmp_path, monkeypatch) -> None:
    """`make run`'s LLM stage: every fold partition in one run (single-run backfill); the folds decide
    concurrently, each provider call carrying every fold's states, and every partition is materialized.
    (A deterministic provider stands in for the model; tests/backtest/test_promotion.py runs a real one.)"""
    import assets.backtest as mod
    from crypto_pipeline.config import Settings
    from crypto_pipeline.llm.rule_based import RuleBased
    from jobs.run_offline import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG

    sizes: list[int] = []

    class Counting(RuleBased):
        def decide(self, states):  # noqa: ANN001, ANN202
            sizes.append(len(states))
            return super().decide(states)

    settings = Settings(warehouse_dir=tmp_path / "wh", mlruns_dir=tmp_path / "mlruns")
    monkeypatch.setattr(mod, "results_dir", lambda: tmp_path / "folds")
    monkeypatch.setattr(mod, "get_settings", lambda: settings)
    made: list[tuple] = []

    def fake(spec, settings_, batch):  # noqa: ANN001, ANN202
        made.append((spec, batch, settings_.llm_dtype))
        return Counting(name="llm-stand-in")

    monkeypatch.setattr(mod, "_llm_provider", fake)
    monkeypatch.setattr(mod, "GATE_SIGNALS", ("buy_hold",))  # the rivals are not what this test is about
    keys = mod.FOLD_PARTITIONS.get_partition_keys()
    symbols = ["BTC/USDT", "ETH/USDT"]
    config = {
        "symbols": symbols,
        "llm_policy": "llm",
        "llm_window_days": 1.0,
        "llm_decision_every_hours": 8.0,
    }
    result = dg.materialize(
        [mod.llm_backtests],
        resources={"mlflow": mod.MlflowResource()},
        run_config={"ops": {"llm_backtests": {"config": config}}},
        tags={PARTITION_RANGE_START_TAG: keys[0], PARTITION_RANGE_END_TAG: keys[-1]},
    )
    assert result.success
    events = result.asset_materializations_for_node("llm_backtests")
    assert sorted(e.partition for e in events) == sorted(keys)
    meta = events[0].metadata
    assert made == [("llm", max(8, len(keys) * len(symbols)), settings.llm_dtype)]
    assert meta["folds"].value == len(keys) and meta["decisions"].value == len(keys) * len(symbols) * 3
    assert meta["audits_passed"].value in (True, False) and "anonymized" in meta["audits"].value
    # One call per decision time for every fold's symbols (and the audits' calls, every fold at once).
    assert max(sizes) == len(keys) * len(symbols) and sum(sizes[:3]) == len(keys) * len(symbols) * 3
    stored = {p.name.split("__")[0] for p in (tmp_path / "folds").glob("*__llm.metrics.parquet")}
    assert stored == set(keys)
    journal = mod.Warehouse(settings.warehouse_dir).read("decisions")
    assert set(journal["run_id"].unique()) == {f"backtest-llm-{k}" for k in keys}

"""The promotion gate end to end on a real registered version (a tiny Llama fine-tuned and registered in a
temporary MLflow): `crypto-pipeline promote` and the Dagster `promotion` asset record the verdict and every
reason as version tags, move `champion` only on promotion, and a leaky policy's failed audit blocks it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from typer.testing import CliRunner

from crypto_pipeline.cli import app
from crypto_pipeline.config import SHARED_MARKET_DATA, Settings
from crypto_pipeline.warehouse import Warehouse

pytestmark = pytest.mark.skipif(
    not (SHARED_MARKET_DATA / "binance-spot-2024").is_dir(), reason="recorded market data not present"
)
AUDITS = ("truncation", "anonymized", "one_bar_lag")


def _client(mlruns: Path):  # noqa: ANN202
    from crypto_pipeline.registry import client

    return client(Settings(mlruns_dir=mlruns).mlflow_tracking_uri)


def _check_recorded(mlruns: Path, out: dict) -> None:
    """The verdict is in the version's tags, reason by reason, and `champion` matches the verdict."""
    client = _client(mlruns)
    tags = client.get_model_version("crypto-policy", out["challenger"]).tags
    assert tags["gate.promoted"] == str(out["promoted"]).lower()
    recorded = [v for k, v in sorted(tags.items()) if k.startswith("gate.reason.")]
    assert recorded == [r[:5000] for r in out["reasons"]]
    try:
        champion = client.get_model_version_by_alias("crypto-policy", "champion").version
    except Exception:  # noqa: BLE001 - no champion
        champion = None
    assert champion == out["champion_after"]
    if out["promoted"]:
        assert out["champion_after"] == out["challenger"]
    else:
        assert out["champion_after"] == out["champion_before"]


def test_promote_command_end_to_end(registered_challenger, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    mlruns, registered = registered_challenger
    mlruns = shutil.copytree(mlruns, tmp_path / "mlruns")  # this test's own registry
    monkeypatch.setenv("CRYPTO_PIPELINE_MLRUNS_DIR", str(mlruns))
    monkeypatch.setenv("CRYPTO_PIPELINE_WAREHOUSE_DIR", str(tmp_path / "wh"))
    args = ["promote", "--symbols", "BTC/USDT", "--folds", "1", "--test-days", "2", "--decision-every", "24"]
    args += ["--audit-samples", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"promoted", "challenger", "champion_before", "champion_after", "reasons"} <= set(out)
    assert isinstance(out["promoted"], bool) and out["challenger"] == registered.version == "1"
    assert out["champion_before"] is None
    # Every rule of the gate is a reason: the baselines, validity, drawdown and the three audits.
    text = "\n".join(out["reasons"])
    assert "vs best baseline" in text and "difference CI" in text  # compared over the same bars
    assert "invalid-output rate" in text and "max drawdown" in text
    for name in AUDITS:
        assert f"audit {name}:" in text
    assert {row["policy"] for row in out["table"]} >= {"llm:1", "rules", "buy_hold", "lgbm"}
    # What the intervals are worth, on how many decisions, and what the decisions look like.
    assert out["evidence"] in ("for", "against", "insufficient") and out["decisions"] > 0
    assert all(i["decisions"] == out["decisions"] and i["width"] >= 0 for i in out["intervals"])
    assert f"evidence: {out['evidence']}" in text and "decisions out of sample: " in text
    assert out["profile"]["decisions"] == out["decisions"]
    _check_recorded(mlruns, out)
    # The LLM's decisions are in the warehouse's decision cache, keyed by version, never by alias.
    cached = pl.read_parquet(tmp_path / "wh" / "decision_cache" / "data.parquet")
    llm = cached.filter(pl.col("model_version") != "")  # RuleBased's decisions are cached too
    assert llm.height > 0 and set(llm["model_version"]) == {"crypto-policy:1"}


def test_a_leaky_policy_fails_its_audit_and_is_not_promoted() -> None:
    from crypto_pipeline.backtest.audits import LeakyPolicy, run_llm_audits
    from crypto_pipeline.backtest.gate import decide_promotion
    from crypto_pipeline.backtest.walkforward import (
        MarketData,
        WalkForwardConfig,
        run_provider_fold,
        walk_forward,
    )

    config = WalkForwardConfig(
        symbols=("BTC/USDT",),
        start="2024-01-01",
        end="2024-04-01",
        n_folds=1,
        test_days=10,
        decision_every_hours=6,
    )
    data = MarketData.load(config)
    fold = config.folds()[0]
    report = walk_forward(config, signal_policies=("buy_hold", "ema_cross"), data=data)
    leaky = run_provider_fold("leaky", LeakyPolicy(data.bars), data, fold, config)
    leaky.audits = run_llm_audits(
        lambda bars: LeakyPolicy(bars["1h"]),
        leaky,
        lambda replay: run_provider_fold("leaky", replay, data, fold, config, lag_bars=1).returns,
        data.bars_by_tf,
        samples=4,
    )
    report.results.append(leaky)
    audits = {a.name: a for a in report.audits("leaky")}
    assert set(audits) == set(AUDITS)
    assert not audits["truncation"].passed, audits["truncation"].detail
    # It reads the next bar, so on time it looks good and one bar late its edge shrinks.
    lag = audits["one_bar_lag"].figures
    assert lag["sharpe"] > lag["sharpe_lagged"]
    verdict = decide_promotion(report, "leaky", audits=report.audits("leaky"))
    assert not verdict.promoted
    assert any(r.startswith("audit truncation: FAIL") for r in verdict.reasons)


def test_promotion_asset_end_to_end(registered_challenger, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """The assets as `make run` runs them (`jobs.run_offline`'s stage functions): the baselines on the
    latest fold, the LLM on every fold in one run (a shorter window here: a day, every 12 h), then
    `walk_forward_report` and `promotion`, then the one comparison table."""
    import assets.backtest as mod
    import assets.training
    import jobs.run_offline
    from jobs.run_offline import run_llm_walk_forward, run_report_and_gate

    monkeypatch.setitem(jobs.run_offline.QUICK_LLM, "llm_window_days", 1.0)
    monkeypatch.setitem(jobs.run_offline.QUICK_LLM, "llm_decision_every_hours", 12.0)

    mlruns, registered = registered_challenger
    mlruns = shutil.copytree(mlruns, tmp_path / "mlruns")
    settings = Settings(mlruns_dir=mlruns, warehouse_dir=tmp_path / "wh")
    monkeypatch.setattr(mod, "results_dir", lambda: tmp_path / "folds")
    monkeypatch.setattr(mod, "get_settings", lambda: settings)
    monkeypatch.setattr(assets.training, "get_settings", lambda: settings)  # MlflowResource's default
    key = mod.FOLD_PARTITIONS.get_partition_keys()[-1]
    instance = dg.DagsterInstance.ephemeral()
    baselines = dg.materialize(
        [mod.baseline_backtests],
        partition_key=key,
        instance=instance,
        # As `make run`: the baselines on more symbols than the LLM decides on (SOL/USDT has 20 hours
        # of this fold that BTC/USDT lacks), so only rivals on the LLM's own ground compare like for like.
        run_config={"ops": {"baseline_backtests": {"config": {"symbols": ["BTC/USDT", "SOL/USDT"]}}}},
    )
    assert baselines.success
    folds = run_llm_walk_forward(instance, ["BTC/USDT"])
    assert folds.success
    events = folds.asset_materializations_for_node("llm_backtests")
    assert sorted(e.partition for e in events) == mod.FOLD_PARTITIONS.get_partition_keys()
    llm_meta = events[0].metadata
    assert llm_meta["policies"].value == "llm:1" and llm_meta["decisions"].value == 3 * 2
    assert all(f"{name}:" in llm_meta["audits"].value for name in AUDITS)
    # The LLM's runs are in the live journal tables too, one run id per fold (drift_sensor's reference).
    journal = Warehouse(settings.warehouse_dir).read("decisions")
    ours = journal.filter(journal["run_id"].str.starts_with("backtest-llm:1-"))
    assert ours.height == llm_meta["decisions"].value and ours["state"].is_not_null().all()
    assert ours["run_id"].n_unique() == 3
    later = run_report_and_gate(instance, ["BTC/USDT"])
    assert later.success  # not passing the gate is an outcome, not a failure
    report_meta = later.asset_materializations_for_node("walk_forward_report")[0].metadata
    assert "llm:1 " + key + " one_bar_lag" in report_meta["audits"].value
    assert "llm:1: " in report_meta["decision_profiles"].value  # each version's shares and reasoning
    meta = later.asset_materializations_for_node("promotion")[0].metadata
    assert meta["evidence"].value in ("for", "against", "insufficient")
    assert meta["decisions"].value == llm_meta["decisions"].value
    assert meta["decision_profile"].value["decisions"] == llm_meta["decisions"].value  # from the journal
    reasons = [line[2:] for line in meta["reasons"].value.splitlines()]
    out = {
        "promoted": meta["promoted"].value,
        "challenger": meta["challenger"].value,
        "champion_before": None,
        "champion_after": None if meta["champion_after"].value == "None" else meta["champion_after"].value,
        "reasons": reasons,
    }
    assert out["challenger"] == registered.version and meta["champion_before"].value == "None"
    assert any(r.startswith("audit truncation:") for r in reasons)
    assert any("vs best baseline" in r and "difference CI" in r for r in reasons)
    assert not any("same ground" in r for r in reasons)
    from crypto_pipeline.backtest.gate import BASELINES, comparison_windows
    from crypto_pipeline.backtest.walkforward import load_fold_results

    folds_ = mod.DEFAULT_WF.folds()
    windows = comparison_windows(load_fold_results(tmp_path / "gate", folds_), "llm:1", BASELINES)
    assert len(windows["llm:1"]) > 0 and all(w.equals(windows["llm:1"]) for w in windows.values())
    everywhere = load_fold_results(tmp_path / "folds", folds_).stitched("buy_hold")
    assert len(everywhere) > len(windows["llm:1"])  # the report's baselines: every symbol's bars
    _check_recorded(mlruns, out)
    # `make run` prints this as ONE table: every policy, and the gate's verdict on the challenger's row.
    from jobs.run_offline import comparison_table

    lines = comparison_table(later)
    assert lines[0].split()[:5] == ["policy", "return", "Sharpe", "[95%", "CI]"]
    rows = {line.split()[0]: line for line in lines[1:] if line.split() and "[" in line}
    assert {"buy_hold", "ema_cross", "rsi", "lgbm", "rules", "llm:1"} <= set(rows)
    verdict = "PROMOTED to champion" if out["promoted"] else "not promoted"
    assert rows["llm:1"].endswith(verdict) and not rows["buy_hold"].endswith(verdict)
    assert any(line.startswith("gate: ") for line in lines)
    [evidence] = [line for line in lines if line.startswith("evidence: ")]
    assert f"on {meta['decisions'].value} decisions" in evidence and ", width " in evidence

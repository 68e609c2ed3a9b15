"""Drift of a live run from its reference run, by PSI over the action mix and state features: on
hand-made samples, on journals written by real sessions on the local exchange, and through
`drift_sensor`, which requests `retrain` once per drifted live run."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd
import polars as pl
import pytest

from assets.resources import WarehouseResource
from crypto_pipeline.config import get_settings
from crypto_pipeline.journal.drift import (
    compare,
    decision_frame,
    journal_drift,
    journal_runs,
    pick_runs,
    psi,
    share_psi,
)
from crypto_pipeline.live.session import LiveSession
from crypto_pipeline.llm.rule_based import RuleBased
from crypto_pipeline.warehouse import Warehouse
from sensors.drift import drift_sensor

from .conftest import AlwaysBuy, Running, clients_for, live_config


def test_psi_is_zero_for_one_population_and_large_for_a_shifted_one() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(0, 1, 5000)
    assert psi(base, rng.normal(0, 1, 5000)) < 0.02
    assert 0.1 < psi(base, rng.normal(0.5, 1, 5000)) < psi(base, rng.normal(1.5, 1, 5000))
    assert psi(base, rng.normal(1.5, 1, 5000)) > 0.25
    assert np.isnan(psi(base, []))
    assert share_psi({"BUY": 0.5, "HOLD": 0.5}, {"BUY": 0.5, "HOLD": 0.5}) == 0
    # A category the reference never had counts (through the empty-bin share), and is large.
    assert share_psi({"HOLD": 1.0}, {"HOLD": 0.5, "INVALID": 0.5}) > 1


def test_compare_flags_the_action_mix_and_a_feature_and_not_too_few_decisions() -> None:
    rng = np.random.default_rng(1)

    def frame(outcomes: list[str], rsi: np.ndarray) -> pl.DataFrame:
        return pl.DataFrame({"outcome": outcomes, "rsi_14@1h": rsi})

    reference = frame(["HOLD"] * 160 + ["BUY"] * 20 + ["SELL"] * 20, rng.normal(50, 10, 200))
    same = frame(["HOLD"] * 80 + ["BUY"] * 10 + ["SELL"] * 10, rng.normal(50, 10, 100))
    report = compare(same, reference, features=["rsi_14@1h"])
    assert not report.drifted and report.action_psi < 0.01, report.summary()

    invalid = frame(["INVALID"] * 60 + ["HOLD"] * 40, rng.normal(50, 10, 100))
    report = compare(invalid, reference, features=["rsi_14@1h"])
    assert report.drifted and report.reasons[0].startswith("action mix PSI")
    assert report.live_mix["INVALID"] == pytest.approx(0.6)

    overbought = frame(["HOLD"] * 80 + ["BUY"] * 10 + ["SELL"] * 10, rng.normal(75, 10, 100))
    report = compare(overbought, reference, features=["rsi_14@1h"])
    assert report.drifted and report.reasons == [
        f"rsi_14@1h PSI {report.feature_psi['rsi_14@1h']:.3f} > 0.25"
    ]

    report = compare(invalid.head(5), reference, features=["rsi_14@1h"])
    assert not report.drifted and "too few decisions" in report.reasons[0]


def test_pick_runs_takes_the_newest_backtest_as_reference_and_the_newest_session_as_live() -> None:
    runs = pl.DataFrame({"run_id": ["backtest-a", "s1", "kill-switch", "backtest-b", "s2"]})
    assert pick_runs(runs) == ("s2", "backtest-b")
    assert pick_runs(runs, "backtest-a") == ("s2", "backtest-a")
    assert pick_runs(runs, "nowhere") == ("s2", None)
    assert pick_runs(runs.head(1)) == (None, "backtest-a")


@pytest.fixture
def journal_of_three_runs(start_exchange, tmp_path) -> Warehouse:
    """One warehouse, three real sessions, each on its own fresh exchange over the same hours: the
    reference (rules), a live run deciding like it, and a live run that only buys and sells."""
    warehouse = Warehouse(tmp_path / "wh")
    for run, provider in (("backtest-wf", RuleBased()), ("same", RuleBased()), ("buyer", AlwaysBuy())):
        server = start_exchange(db_path=tmp_path / f"{run}.sqlite")
        session = LiveSession(live_config(session_id=run), clients_for(server), provider, warehouse)
        with Running(session, server) as running:
            running.step(3)
        server.stop()
    return warehouse


def test_real_journals_show_drift_for_another_policy_and_none_for_the_same(journal_of_three_runs) -> None:
    warehouse = journal_of_three_runs
    decisions = warehouse.read("decisions")
    frame = decision_frame(decisions.filter(pl.col("run_id") == "buyer"))
    assert frame.height == 8 and frame["rsi_14@1h"].is_not_null().all()
    assert set(frame["outcome"]) <= {"BUY", "SELL"}

    same = journal_drift(warehouse, "same", "backtest-wf", min_decisions=8)
    assert not same.drifted and same.action_psi == pytest.approx(0, abs=1e-9), same.summary()
    # The same hours and symbols: the states' features are the same population (a 7-day volume
    # average needs more than the 4 days loaded: no values, no judgement).
    judged = {f: v for f, v in same.feature_psi.items() if not np.isnan(v)}
    assert set(judged) >= {"change_1h", "rsi_14@1h", "atr_pct@1h"}
    assert all(v == pytest.approx(0, abs=1e-9) for v in judged.values()), same.feature_psi

    buyer = journal_drift(warehouse, "buyer", "backtest-wf", min_decisions=8)
    assert buyer.drifted and buyer.action_psi > 1, buyer.summary()
    assert journal_runs(warehouse)["run_id"].to_list()[-1] == "buyer"


def test_drift_sensor_requests_retrain_once_per_drifted_live_run(journal_of_three_runs, monkeypatch) -> None:
    monkeypatch.setenv("CRYPTO_PIPELINE_MONITORING__DRIFT_MIN_DECISIONS", "8")
    get_settings.cache_clear()
    try:
        resources = {"warehouse": WarehouseResource(root=str(journal_of_three_runs.root))}
        with dg.build_sensor_context(resources=resources) as context:
            result = drift_sensor(context)
        assert [r.run_key for r in result.run_requests] == ["drift-buyer-vs-backtest-wf"]
        assert result.run_requests[0].tags["live_run"] == "buyer"
        assert "action mix PSI" in result.run_requests[0].tags["drift"]
        with dg.build_sensor_context(cursor=result.cursor, resources=resources) as context:
            assert drift_sensor(context).run_requests == []  # acted on once

        # The reference named in the settings: "same" judged against it shows no drift... of "buyer"
        # against "same" it does; and "same" itself is never judged against itself.
        monkeypatch.setenv("CRYPTO_PIPELINE_MONITORING__DRIFT_REFERENCE_RUN", "same")
        get_settings.cache_clear()
        with dg.build_sensor_context(resources=resources) as context:
            assert [r.run_key for r in drift_sensor(context).run_requests] == ["drift-buyer-vs-same"]
        monkeypatch.setenv("CRYPTO_PIPELINE_MONITORING__DRIFT_MIN_DECISIONS", "50")
        monkeypatch.delenv("CRYPTO_PIPELINE_MONITORING__DRIFT_REFERENCE_RUN")
        get_settings.cache_clear()
        with dg.build_sensor_context(resources=resources) as context:
            assert drift_sensor(context).run_requests == []  # 8 decisions: too few to judge
    finally:
        get_settings.cache_clear()


@pytest.mark.requires_data("binance-spot-2024")
def test_a_journaled_backtest_is_the_reference_a_live_run_is_judged_against(start_exchange, tmp_path) -> None:
    from datetime import UTC, datetime

    from crypto_pipeline.backtest.folds import Fold
    from crypto_pipeline.backtest.journaling import journal_policy_run
    from crypto_pipeline.backtest.walkforward import MarketData, WalkForwardConfig, run_provider_fold
    from crypto_pipeline.journal.performance import live_performance
    from crypto_pipeline.llm.prompts import build_user_prompt
    from crypto_pipeline.risk import RiskConfig

    from .conftest import SYMBOLS

    config = WalkForwardConfig(
        symbols=SYMBOLS,
        start="2024-07-01",
        end="2024-08-05",
        decision_every_hours=1,
        risk=RiskConfig(min_confidence=50),
    )
    start, end = datetime(2024, 8, 1, tzinfo=UTC), datetime(2024, 8, 5, tzinfo=UTC)
    run = run_provider_fold(
        "rules", RuleBased(), MarketData.load(config), Fold(0, start, start, start, end), config
    ).run
    assert run is not None and run.fills and len(run.states) == len(run.decisions) == 4 * 24 * 2

    warehouse = Warehouse(tmp_path / "wh")
    written = journal_policy_run(warehouse, "backtest-rules", run)
    assert written["decisions"] == written["risk_verdicts"] == len(run.decisions)
    assert written["fills"] == len(run.fills) and written["orders"] == 2 * len(run.fills)
    decisions = warehouse.read("decisions").sort("time", "symbol")
    first = min(run.states, key=lambda s: (s.at, s.symbol))
    assert decisions["prompt"][0] == build_user_prompt(first)  # the prompt with the portfolio it saw
    fills = warehouse.read("fills")
    assert fills["fee"].sum() == pytest.approx(sum(f.fee for f in run.fills))
    journal_policy_run(warehouse, "backtest-rules", run)  # journaled again: nothing added
    assert warehouse.read("decisions").height == len(run.decisions)
    equity = warehouse.read("equity").sort("time")
    assert equity.height == 4 * 24 and equity["equity"][-1] == pytest.approx(
        float(run.equity.asof(pd.Timestamp(equity["time"][-1])))
    )

    server = start_exchange()
    session = LiveSession(live_config(session_id="buyer"), clients_for(server), AlwaysBuy(), warehouse)
    with Running(session, server) as running:
        running.step(3)
    runs = journal_runs(warehouse)
    assert pick_runs(runs) == ("buyer", "backtest-rules")
    report = journal_drift(warehouse, "buyer", "backtest-rules", min_decisions=8)
    assert report.drifted and report.reasons[0].startswith("action mix PSI"), report.summary()
    # The backtest's slippage against the closes its decisions saw: its own next-open fills.
    perf = live_performance(warehouse, "backtest-rules")
    assert perf.slippage_fills == len(run.fills) and perf.valid_rate == 1.0

"""The Dagster layer: definitions load, assets materialize over partition ranges, checks guard each stage."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.features import features, market_states
from assets.market_data import bars, raw_bars
from assets.resources import MarketDataSourceResource, WarehouseResource
from crypto_pipeline.config import REPO_ROOT
from crypto_pipeline.llm.prompts import PROMPT_VERSION
from crypto_pipeline.warehouse import Warehouse
from definitions import defs
from jobs.run_offline import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG

ALL_ASSETS = [raw_bars, bars, features, market_states]
UTC = UTC


@pytest.fixture(scope="module")
def binance(recorded) -> Path:
    return recorded("binance-spot-2024")


def run_range(
    tmp_warehouse: Path,
    first: str,
    last: str,
    *,
    data_dir: Path,
    symbols=("BTC/USDT", "ETH/USDT"),
    assets=ALL_ASSETS,
) -> dg.ExecuteInProcessResult:
    symbols = list(symbols)
    op_config = {
        "raw_bars": {"config": {"symbols": symbols}},
        "bars": {"config": {"symbols": symbols}},
        "features": {"config": {"symbols": symbols}},
        "market_states": {"config": {"symbols": symbols}},
    }
    selected = {a.key.path[-1] for a in assets}
    return dg.materialize(
        assets,
        resources={
            "warehouse": WarehouseResource(root=str(tmp_warehouse)),
            "market_data_source": MarketDataSourceResource(kind="recorded", data_dir=str(data_dir)),
        },
        run_config={"ops": {k: v for k, v in op_config.items() if k in selected}},
        tags={PARTITION_RANGE_START_TAG: first, PARTITION_RANGE_END_TAG: last},
        raise_on_error=False,
    )


def checks_by_name(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {
        f"{ev.asset_key.to_user_string()}.{ev.check_name}": ev.passed
        for ev in result.get_asset_check_evaluations()
    }


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {m.materialization.asset_key.to_user_string() for m in result.get_asset_materialization_events()}


def test_definitions_load_with_blocking_checks_on_every_stage():
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def("market_data") is not None
    specs = {spec.key.name: spec for a in ALL_ASSETS for spec in a.check_specs}
    assert {"unique_symbol_timestamp", "ohlc_consistent", "monotonic_time", "gap_ratio"} <= specs.keys()
    assert {"no_nan_after_warmup", "no_lookahead"} <= specs.keys()
    assert all(spec.blocking for spec in specs.values())


@pytest.mark.slow
def test_workspace_yaml_loads_in_the_dagster_cli(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_week_materializes_every_stage_with_all_checks_passing(tmp_path, binance):
    result = run_range(tmp_path, "2024-03-04", "2024-03-10", data_dir=binance)
    assert result.success
    assert materialized(result) == {"raw_bars", "bars", "features", "market_states"}
    checks = checks_by_name(result)
    assert len(checks) == 6 and all(checks.values()), checks

    feature_events = [
        m.materialization for m in result.get_asset_materialization_events()
        if m.materialization.asset_key.to_user_string() == "features"
    ]  # fmt: skip
    charts = {k: v.value for k, v in feature_events[-1].metadata.items() if k.startswith("chart_")}
    assert set(charts) == {"chart_BTC/USDT", "chart_ETH/USDT"}
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in charts.values())

    wh = Warehouse(tmp_path)
    built = wh.read("bars")
    assert set(built["timeframe"].unique()) == {"5m", "15m", "1h", "4h", "1d"}
    per_tf = dict(built.filter(pl.col("symbol") == "BTC/USDT").group_by("timeframe").len().iter_rows())
    assert per_tf == {"5m": 7 * 288, "15m": 7 * 96, "1h": 7 * 24, "4h": 7 * 6, "1d": 7}
    states = wh.read("market_states")
    assert states.height == 2 * 7 * 24  # one state per symbol per hour
    assert states["prompt"].str.contains("chg24h").all()
    assert (states["prompt_version"] == PROMPT_VERSION).all() and states["prompt_hash"].n_unique() == states.height
    # Every state reads only bars closed at its decision time.
    for column in [c for c in states.columns if c.startswith("bar_close_")]:
        assert states.filter(pl.col(column) > pl.col("at")).is_empty()


def _copy_with_faults(source: Path, target_dir: Path) -> pl.DataFrame:
    """A recorded 5m file for one symbol and three days, with every kind of bad row injected."""
    target_dir.mkdir()
    day = pl.read_parquet(source / "bars_5m.parquet").filter(
        (pl.col("symbol") == "BTC/USDT")
        & (pl.col("timestamp") >= datetime(2024, 3, 4, tzinfo=UTC))
        & (pl.col("timestamp") < datetime(2024, 3, 7, tzinfo=UTC))
    )
    rows = day.to_dicts()
    rows[10]["close"] = float("nan")
    rows[20]["open"] = -5.0
    rows[30]["high"], rows[30]["low"] = rows[30]["low"] - 1, rows[30]["high"] + 1
    rows[40]["close"] = 0.0
    rows[50]["volume"] = -1.0
    bad = pl.DataFrame(rows, schema=day.schema)
    faulty = pl.concat([bad, bad.slice(60, 1)])  # a duplicated bar
    faulty = pl.concat([faulty.slice(100), faulty.slice(0, 100)])  # out of order
    faulty.write_parquet(target_dir / "bars_5m.parquet")
    return faulty


def test_bad_source_rows_are_quarantined_with_reasons_and_nothing_crashes(tmp_path, binance):
    data_dir = tmp_path / "faulty"
    _copy_with_faults(binance, data_dir)
    result = run_range(
        tmp_path / "wh",
        "2024-03-04",
        "2024-03-06",
        data_dir=data_dir,
        symbols=["BTC/USDT"],
        assets=[raw_bars, bars],
    )
    assert materialized(result) == {"raw_bars", "bars"}
    quarantine = Warehouse(tmp_path / "wh").read_quarantine()
    reasons = set(quarantine["reason"].to_list())
    assert {"non_finite", "non_positive_price", "high_below_low", "negative_volume", "duplicate"} <= reasons
    # The clean table holds only valid bars, so the OHLC, uniqueness and ordering checks pass on it.
    checks = checks_by_name(result)
    assert (
        checks["bars.ohlc_consistent"]
        and checks["bars.unique_symbol_timestamp"]
        and checks["bars.monotonic_time"]
    )


def test_too_many_gaps_fail_the_blocking_check_and_stop_downstream_assets(tmp_path, binance):
    data_dir = tmp_path / "gappy"
    data_dir.mkdir()
    bars_5m = pl.read_parquet(binance / "bars_5m.parquet").filter(
        (pl.col("symbol") == "BTC/USDT")
        & (pl.col("timestamp") >= datetime(2024, 3, 4, tzinfo=UTC))
        & (pl.col("timestamp") < datetime(2024, 3, 6, tzinfo=UTC))
    )
    bars_5m.gather_every(2).write_parquet(data_dir / "bars_5m.parquet")  # half the bars missing
    result = run_range(tmp_path / "wh", "2024-03-04", "2024-03-05", data_dir=data_dir, symbols=["BTC/USDT"])
    checks = checks_by_name(result)
    assert checks["bars.gap_ratio"] is False
    assert "features" not in materialized(result) and "market_states" not in materialized(result)
    assert not result.success


def test_appending_a_day_rewrites_only_that_day(tmp_path, binance):
    assert run_range(tmp_path, "2024-03-04", "2024-03-06", data_dir=binance, assets=[raw_bars, bars]).success
    wh_files = sorted((tmp_path).rglob("*.parquet"))
    before = {p: p.stat().st_mtime_ns for p in wh_files}
    assert run_range(tmp_path, "2024-03-07", "2024-03-07", data_dir=binance, assets=[raw_bars, bars]).success
    after = {p: p.stat().st_mtime_ns for p in sorted(tmp_path.rglob("*.parquet"))}
    assert all(after[p] == before[p] for p in before if "2024-03-05" in str(p) or "2024-03-04" in str(p))
    new_files = set(after) - set(before)
    assert new_files and all("2024-03-07" in str(p) or "2024-03-06" in str(p) for p in new_files)
    assert Warehouse(tmp_path).read("bars", timeframes=["1d"], symbols=["BTC/USDT"]).height == 4


def test_partitions_cover_partitions_start_to_partitions_end_both_included():
    from assets.partitions import DAILY_PARTITIONS
    from crypto_pipeline.config import get_settings

    settings = get_settings()
    keys = DAILY_PARTITIONS.get_partition_keys()
    assert (keys[0], keys[-1]) == (settings.partitions_start, settings.partitions_end)

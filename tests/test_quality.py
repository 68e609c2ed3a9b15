"""The data-quality checks' registry, and the `no_lookahead` check of market states: it passes on the real
state builder and FAILS on one that peeks a single bar ahead (real recorded bars and features)."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from crypto_pipeline.features import compute_features
from crypto_pipeline.llm.prompts import PROMPT_VERSION, build_user_prompt, prompt_hash
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.quality import NO_LOOKAHEAD, QUALITY_CHECKS, check_no_lookahead, checks_for
from crypto_pipeline.state import STATE_TIMEFRAMES
from crypto_pipeline.state import build as states
from crypto_pipeline.warehouse import Warehouse

FIRST, END = datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 7, tzinfo=UTC)


def peeking(features: pl.DataFrame, points: pl.DataFrame) -> pl.DataFrame:
    """A state builder with a one-bar look-ahead bug: every bar is taken to close one bar earlier."""
    durations = {tf.value: tf.duration for tf in Timeframe}
    shifted = features.with_columns(
        pl.col("timestamp") - pl.col("timeframe").replace_strict(durations, return_dtype=pl.Duration("us"))
    )
    return states.market_state_table(shifted, points)


@pytest.fixture(scope="module")
def features(recorded) -> pl.DataFrame:
    frames = []
    for tf in STATE_TIMEFRAMES:
        bars = pl.read_parquet(recorded("binance-spot-2024", f"bars_{tf}.parquet")).filter(
            pl.col("symbol").is_in(["BTC/USDT", "ETH/USDT"]) & (pl.col("timestamp") < END)
        )
        frames.append(compute_features(bars, tf).with_columns(pl.lit(tf).alias("timeframe")))
    return pl.concat(frames, how="diagonal_relaxed")


def test_every_check_has_one_unique_name_and_a_description() -> None:
    names = [check.name for check in QUALITY_CHECKS]
    assert len(names) == len(set(names))
    assert all(check.description for check in QUALITY_CHECKS)
    assert [c.name for c in checks_for("market_states")] == [NO_LOOKAHEAD.name]


def test_no_lookahead_passes_on_the_state_builder_and_fails_on_a_one_bar_peek(features: pl.DataFrame) -> None:
    points = states.decision_points(features, "1h", FIRST, END)
    assert points.height == 2 * 3 * 24
    honest = check_no_lookahead(features, points, build=states.market_state_table)
    assert honest.passed and honest.total == 3, honest.sample_records()
    peek = check_no_lookahead(features, points, build=peeking)
    assert not peek.passed and peek.count >= 1
    assert "with the full data" in peek.sample["error"][0]


def test_build_market_states_stores_the_prompt_its_version_and_hash_and_reports_the_audit(
    tmp_path, features: pl.DataFrame
) -> None:
    wh = Warehouse(tmp_path)
    wh.upsert("features", features)
    report = states.build_market_states(wh, ["BTC/USDT", "ETH/USDT"], "2024-03-04", "2024-03-06")
    assert report.states == 2 * 3 * 24 and [c.passed for c in report.checks] == [True]
    stored = wh.read("market_states").sort("symbol", "at")
    assert (stored["prompt_version"] == PROMPT_VERSION).all()
    # The stored prompt is byte for byte what the model is shown for the state, and so is its hash.
    for state, row in zip(states.states_from_table(stored), stored.iter_rows(named=True), strict=True):
        assert row["prompt"] == build_user_prompt(state)
        assert row["prompt_hash"] == prompt_hash(build_user_prompt(state))

    leaky = states.build_market_states(
        Warehouse(tmp_path / "leaky"), ["BTC/USDT"], "2024-03-04", "2024-03-06"
    )
    assert leaky.states == 0  # nothing to build from an empty warehouse
    wh_peek = Warehouse(tmp_path / "peek")
    wh_peek.upsert("features", features)
    peek = states.build_market_states(wh_peek, ["BTC/USDT"], "2024-03-04", "2024-03-06", build=peeking)
    assert [c.passed for c in peek.checks] == [False]

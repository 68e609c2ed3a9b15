"""The warm-feature quality check fails on NaN/inf and on too many nulls, and passes on real features."""

from __future__ import annotations

import polars as pl
import pytest

from crypto_pipeline.features import compute_features, warmup_bars
from crypto_pipeline.quality import check_warm_features


@pytest.fixture(scope="module")
def real_features(recorded) -> pl.DataFrame:
    frames = []
    for tf in ("1h", "4h", "1d"):
        bars = pl.read_parquet(recorded("binance-spot-2024", f"bars_{tf}.parquet")).filter(
            pl.col("symbol").is_in(["BTC/USDT", "ETH/USDT"])
        )
        frames.append(compute_features(bars, tf).with_columns(pl.lit(tf).alias("timeframe")))
    return pl.concat(frames, how="diagonal_relaxed")


def test_real_features_pass(real_features):
    result = check_warm_features(real_features, warmup_bars)
    assert result.passed, result.sample
    assert result.total > 20  # every warm feature of every timeframe was looked at


def test_a_single_nan_in_a_warm_feature_fails(real_features):
    idx = real_features.with_row_index().filter(pl.col("warm") & (pl.col("timeframe") == "1h"))["index"][100]
    broken = real_features.with_columns(
        pl.when(pl.int_range(pl.len()) == idx).then(float("nan")).otherwise(pl.col("rsi_14")).alias("rsi_14")
    )
    result = check_warm_features(broken, warmup_bars)
    assert not result.passed
    assert result.sample.row(0, named=True)["feature"] == "rsi_14"


def test_nulls_are_tolerated_up_to_the_ratio_then_fail(real_features):
    warm_1h = real_features.with_row_index().filter(pl.col("warm") & (pl.col("timeframe") == "1h"))
    few = set(warm_1h["index"].head(int(warm_1h.height * 0.01)).to_list())
    many = set(warm_1h["index"].head(int(warm_1h.height * 0.05)).to_list())
    for rows, passes in ((few, True), (many, False)):
        holed = real_features.with_row_index().with_columns(
            pl.when(pl.col("index").is_in(list(rows)))
            .then(None)
            .otherwise(pl.col("ret_24h"))
            .alias("ret_24h")
        )
        assert check_warm_features(holed.drop("index"), warmup_bars, max_null_ratio=0.02).passed is passes


def test_features_not_in_the_timeframes_warmup_table_are_not_judged(real_features):
    # ret_1h cannot exist on 4h or 1d bars: it is null there by definition, and that is not a failure.
    assert real_features.filter(pl.col("timeframe") == "4h")["ret_1h"].null_count() > 0
    assert check_warm_features(real_features, warmup_bars).passed

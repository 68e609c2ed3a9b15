"""Look-ahead and recursive analysis of the features on real bars, in the spirit of freqtrade's
``lookahead-analysis`` and ``recursive-analysis``.

- Look-ahead: for many random cut times t, computing on the bars up to t gives exactly (bit for bit) the
  values computed on the full history, at every row <= t. Same for the multi-timeframe join, with the 4h
  and 1d bars resampled from the cut 1h bars, so the last higher bar is the partial one a live system sees.
- Recursive: once a row is `warm`, its values do not depend on how much earlier history was loaded.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from crypto_pipeline.features import (
    EMA_200_WARMUP_BARS,
    SEED_WEIGHT_TOLERANCE,
    WARMUP_BARS,
    compute_features,
    join_higher_timeframes,
)
from crypto_pipeline.leakage import LookaheadError, assert_no_lookahead
from crypto_pipeline.market.timeframes import Timeframe

# Two majors, a sub-cent meme coin and a pair listed in late August (so some cuts fall before its start).
HOURLY_SYMBOLS = ("BTC/USDT", "ETH/USDT", "PEPE/USDT", "DOGS/USDT")
FIVE_MINUTE_SYMBOLS = ("SOL/USDT", "WIF/USDT")
CUTS = 60


@pytest.fixture(scope="module")
def hourly(recorded) -> pl.DataFrame:
    return pl.scan_parquet(recorded("binance-spot-2024", "bars_1h.parquet")).filter(pl.col("symbol").is_in(HOURLY_SYMBOLS)).collect()


@pytest.fixture(scope="module")
def five_minute(recorded) -> pl.DataFrame:
    """Three weeks of 5m bars: enough for the 7-day volume window to warm up and be cut."""
    return (
        pl.scan_parquet(recorded("binance-spot-2024", "bars_5m.parquet"))
        .filter(
            pl.col("symbol").is_in(FIVE_MINUTE_SYMBOLS)
            & pl.col("timestamp").is_between(
                datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 22, tzinfo=UTC), closed="left"
            )
        )
        .collect()
    )


def random_cuts(bars: pl.DataFrame, count: int, seed: int) -> list[datetime]:
    """Cut times spread over the history: on bar opens (the bar at t is kept) and between them."""
    rng = random.Random(seed)
    opens = bars["timestamp"].unique().sort().to_list()
    cuts = [rng.choice(opens) for _ in range(count)]
    return [cut + timedelta(minutes=rng.choice((0, 0, 2))) for cut in cuts] + [opens[0], opens[-1]]


def resample(bars: pl.DataFrame, timeframe: Timeframe) -> pl.DataFrame:
    """Higher-timeframe bars built from whatever base bars exist (the last one may still be forming)."""
    return (
        bars.sort("symbol", "timestamp")
        .group_by_dynamic(
            "timestamp", every=timeframe.polars_every, group_by="symbol", closed="left", label="left"
        )
        .agg(
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
            pl.col("volume").sum(),
        )
    )


# --- look-ahead ------------------------------------------------------------------------------------


def test_hourly_features_at_or_before_a_cut_never_change_when_later_bars_are_removed(hourly):
    compared = assert_no_lookahead(
        lambda bars: compute_features(bars, "1h"), hourly, random_cuts(hourly, CUTS, 1)
    )
    assert compared > 100_000


def test_five_minute_features_at_or_before_a_cut_never_change_when_later_bars_are_removed(five_minute):
    cuts = random_cuts(five_minute, CUTS, 2)
    compared = assert_no_lookahead(lambda bars: compute_features(bars, "5m"), five_minute, cuts)
    assert compared > 100_000


def features_with_higher_timeframes(bars: pl.DataFrame) -> pl.DataFrame:
    higher = {tf: compute_features(resample(bars, tf), tf) for tf in (Timeframe.H4, Timeframe.D1)}
    return join_higher_timeframes(compute_features(bars, "1h"), higher, "1h")


def test_joined_higher_timeframe_features_never_change_when_later_bars_are_removed(hourly):
    compared = assert_no_lookahead(features_with_higher_timeframes, hourly, random_cuts(hourly, CUTS, 3))
    assert compared > 100_000


def test_the_audit_catches_a_join_on_open_times_and_features_that_peek(hourly):
    """The audit can fail: a 4h bar joined as soon as it opens, a centred window and a full-sample z-score
    all read the future, and each is caught."""
    cuts = random_cuts(hourly, 10, 4)

    def joined_on_open_times(bars: pl.DataFrame) -> pl.DataFrame:
        four_hourly = (
            compute_features(resample(bars, Timeframe.H4), "4h")
            .select("symbol", "timestamp", pl.col("rsi_14").alias("rsi_14_4h"))
            .sort("timestamp")
        )
        return (
            compute_features(bars, "1h")
            .sort("timestamp")
            .join_asof(four_hourly, on="timestamp", by="symbol", check_sortedness=False)
        )

    leaky: list[Callable[[pl.DataFrame], pl.DataFrame]] = [
        joined_on_open_times,
        lambda bars: bars.with_columns(
            pl.col("close").rolling_mean(5, center=True).over("symbol").alias("smooth")
        ),
        lambda bars: bars.with_columns(
            ((pl.col("close") - pl.col("close").mean()) / pl.col("close").std()).alias("z")
        ),
    ]
    for fn in leaky:
        with pytest.raises(LookaheadError, match="with the data cut at"):
            assert_no_lookahead(fn, hourly, cuts)


# --- recursive analysis ----------------------------------------------------------------------------------


def assert_independent_of_history(
    full: pl.DataFrame, later: pl.DataFrame, columns: list[str], *, rows: pl.Expr
) -> int:
    """On the selected rows of `later` (computed from a shorter history), every column matches `full`:
    |later - full| <= 1e-6 * |full| + atol, atol being 1e-8 of the close for the zero-crossing MACD lines
    and 1e-12 otherwise. Returns the number of values compared."""
    pairs = later.filter(rows).join(full, on=["symbol", "timestamp"], suffix="_full")
    assert pairs.height > 0
    for name in columns:
        short, long_ = pairs[name].to_numpy(), pairs[f"{name}_full"].to_numpy()
        atol = 1e-8 * pairs["close"].to_numpy() if name.startswith("macd") else 1e-12
        excess = np.abs(short - long_) - (1e-6 * np.abs(long_) + atol)
        worst = int(np.nanargmax(excess))
        assert not np.isnan(short).any() and not np.isnan(long_).any(), name
        assert excess[worst] <= 0, f"{name}: {short[worst]!r} vs {long_[worst]!r} with the full history"
    return pairs.height * len(columns)


@pytest.mark.parametrize(
    ("timeframe", "fixture", "offsets"),
    [("1h", "hourly", (137, 600, 1500)), ("5m", "five_minute", (300, 1000))],
)
def test_warm_values_do_not_depend_on_how_much_history_was_loaded(request, timeframe, fixture, offsets):
    bars: pl.DataFrame = request.getfixturevalue(fixture)
    tf = Timeframe.parse(timeframe)
    full = compute_features(bars, tf)
    # ema_200 is "warm" from its first value but still converging: checked on its own below.
    columns = [name for name in WARMUP_BARS[tf] if name != "ema_200"]
    for offset in offsets:
        start = bars["timestamp"].min() + offset * tf.duration
        later = compute_features(bars.filter(pl.col("timestamp") >= start), tf)
        assert assert_independent_of_history(full, later, columns, rows=pl.col("warm")) > 10_000


def test_ema_200_converges_from_its_seed_within_the_documented_horizon(hourly):
    horizon = EMA_200_WARMUP_BARS + int(
        np.ceil(np.log(SEED_WEIGHT_TOLERANCE[Timeframe.H1]) / np.log(1 - 2 / 201))
    )
    full = compute_features(hourly, "1h")
    start = hourly["timestamp"].min() + timedelta(hours=500)
    later = compute_features(hourly.filter(pl.col("timestamp") >= start), "1h")
    converged = pl.int_range(pl.len()).over("symbol") >= horizon
    assert assert_independent_of_history(full, later, ["ema_200"], rows=converged) > 5_000
    # Just after it becomes "warm" it still carries its seed: the documented reason it is kept apart.
    just_warm = later.filter(pl.col("timestamp") == start + timedelta(hours=EMA_200_WARMUP_BARS + 10))
    pairs = just_warm.join(full, on=["symbol", "timestamp"], suffix="_full")
    assert (pairs["ema_200"] / pairs["ema_200_full"] - 1).abs().max() > 1e-6


def test_the_audit_reports_rows_that_appear_or_vanish_with_the_future():
    bars = pl.DataFrame(
        {
            "symbol": ["A"] * 4,
            "timestamp": [datetime(2024, 1, 1, h, tzinfo=UTC) for h in range(4)],
            "close": [1.0] * 4,
        }
    )

    def drops_the_last_row(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.head(frame.height - 1)  # knows which row is last: the future

    with pytest.raises(LookaheadError, match="rows up to the cut differ"):
        assert_no_lookahead(drops_the_last_row, bars, [datetime(2024, 1, 1, 1, tzinfo=UTC)])
    assert assert_no_lookahead(lambda frame: frame, bars, [datetime(2024, 1, 1, 1, tzinfo=UTC)]) == 2

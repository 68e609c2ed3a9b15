"""The feature library: TA-Lib parity on real bars, the time-window features against an independent numpy
computation, per-symbol grouping, bad input, timeframe inference, warm-up and the multi-timeframe join."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import talib
from numpy.lib.stride_tricks import sliding_window_view

from crypto_pipeline.features import (
    FEATURE_COLUMNS,
    WARMUP_BARS,
    applicable_features,
    compute_features,
    infer_timeframe,
    join_higher_timeframes,
    warmup_bars,
)
from crypto_pipeline.market.timeframes import Timeframe

# Large and tiny prices, a meme coin and a euro stablecoin listed in late August (232 bars).
PARITY_SYMBOLS = ("BTC/USDT", "ETH/USDT", "1000SATS/USDT", "PEPE/USDT", "EURI/USDT")
T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def binance(recorded) -> Path:
    return recorded("binance-spot-2024")


def recorded_bars(binance: Path, timeframe: str, symbols: tuple[str, ...]) -> pl.DataFrame:
    return (
        pl.scan_parquet(binance / f"bars_{timeframe}.parquet").filter(pl.col("symbol").is_in(symbols)).collect()
    )


def synthetic(
    n: int, *, symbol: str = "AAA/USD", step: timedelta = timedelta(hours=1), seed: int = 7
) -> pl.DataFrame:
    """A random walk with consistent OHLC, for edge cases that real data does not contain."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate(([100.0], close[:-1]))
    spread = np.abs(rng.normal(0, 0.005, n)) * close
    return pl.DataFrame(
        {
            "symbol": [symbol] * n,
            "timestamp": [T0 + i * step for i in range(n)],
            "open": open_,
            "high": np.maximum(open_, close) + spread,
            "low": np.minimum(open_, close) - spread,
            "close": close,
            "volume": rng.uniform(10, 1000, n),
        }
    ).with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))


TALIB_INDICATORS = (
    "rsi_14",
    "rsi_21",
    "macd",
    "macd_signal",
    "macd_hist",
    "ema_9",
    "ema_21",
    "ema_50",
    "ema_200",
    "atr_14",
    "bb_pctb_20",
)


def talib_reference(close: np.ndarray, high: np.ndarray, low: np.ndarray) -> dict[str, np.ndarray]:
    macd, signal, hist = talib.MACD(close, 12, 26, 9)
    upper, _, lower = talib.BBANDS(close, 20, 2.0, 2.0, 0)
    return {
        "rsi_14": talib.RSI(close, 14),
        "rsi_21": talib.RSI(close, 21),
        "macd": macd,
        "macd_signal": signal,
        "macd_hist": hist,
        "ema_9": talib.EMA(close, 9),
        "ema_21": talib.EMA(close, 21),
        "ema_50": talib.EMA(close, 50),
        "ema_200": talib.EMA(close, 200),
        "atr_14": talib.ATR(high, low, close, 14),
        "bb_pctb_20": (close - lower) / (upper - lower),
    }


# MACD lines and %B cross zero, where a relative tolerance means nothing: they also get an absolute one,
# in price units for MACD (1e-9 of the close) and in band widths for %B.
ZERO_CROSSING = {"macd", "macd_signal", "macd_hist", "bb_pctb_20"}


def assert_matches_talib(features: pl.DataFrame, indicator: str, *, first_compared: int = 0) -> int:
    """Every value TA-Lib defines (from bar `first_compared` on) matches at rtol 1e-6, and ours is null
    exactly where TA-Lib has none. Returns the number of values compared."""
    compared = 0
    for (symbol,), bars in features.group_by("symbol"):
        close, high, low = (bars[name].to_numpy() for name in ("close", "high", "low"))
        expected = talib_reference(close, high, low)[indicator][first_compared:]
        ours = bars[indicator].to_numpy(allow_copy=True)[first_compared:]
        np.testing.assert_array_equal(
            np.isnan(ours), np.isnan(expected), err_msg=f"{symbol} {indicator} nulls"
        )
        defined = ~np.isnan(expected)
        atol = 1e-9 * close[first_compared:][defined] if indicator in ZERO_CROSSING else 0.0
        if indicator == "bb_pctb_20":
            atol = 1e-9
        assert_close(ours[defined], expected[defined], rtol=1e-6, atol=atol, what=f"{symbol} {indicator}")
        compared += int(defined.sum())
    return compared


def assert_close(
    actual: np.ndarray, expected: np.ndarray, *, rtol: float, atol: float | np.ndarray, what: str
) -> None:
    """|actual - expected| <= atol + rtol * |expected| everywhere (atol may differ per value)."""
    if actual.size == 0:
        return
    excess = np.abs(actual - expected) - (atol + rtol * np.abs(expected))
    worst = int(np.argmax(excess))
    assert excess[worst] <= 0, f"{what}: value {worst} is {actual[worst]!r}, expected {expected[worst]!r}"


@pytest.fixture(scope="module")
def hourly_features(binance: Path) -> pl.DataFrame:
    return compute_features(recorded_bars(binance, "1h", PARITY_SYMBOLS), "1h")


# --- TA-Lib parity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("indicator", TALIB_INDICATORS)
def test_indicator_matches_talib_from_its_first_value_on_real_hourly_bars(hourly_features, indicator):
    compared = assert_matches_talib(hourly_features, indicator)
    assert compared > 20_000


@pytest.mark.parametrize("indicator", ["rsi_14", "macd_signal", "ema_200", "atr_14", "bb_pctb_20"])
def test_indicator_matches_talib_once_warm(hourly_features, indicator):
    warm_from = max(WARMUP_BARS[Timeframe.H1].values())
    assert assert_matches_talib(hourly_features, indicator, first_compared=warm_from) > 15_000


def test_indicators_match_talib_on_real_daily_bars(binance: Path):
    daily = compute_features(recorded_bars(binance, "1d", ("BTC/USDT",)), "1d")
    assert daily.height >= 240
    for indicator in TALIB_INDICATORS:
        assert assert_matches_talib(daily, indicator) >= 30


def test_rsi_is_null_in_a_flat_market_where_talib_says_zero():
    bars = synthetic(40).with_columns(pl.lit(5.0).alias(name) for name in ("open", "high", "low", "close"))
    rsi = compute_features(bars, "1h")["rsi_14"]
    assert talib.RSI(np.full(40, 5.0), 14)[-1] == 0.0
    assert rsi.null_count() == 40


# --- time-window features ----------------------------------------------------------------------------


def numpy_time_features(bars: pl.DataFrame, vwap: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The 1h time-window features written out directly (two-pass std, explicit windows)."""
    close, high, low, volume = (bars[name].to_numpy() for name in ("close", "high", "low", "volume"))
    n, day, week = len(close), 24, 168
    nan = np.full(n, np.nan)
    log_return = np.diff(np.log(close), prepend=np.nan)
    vol = nan.copy()
    vol[day:] = sliding_window_view(log_return[1:], day).std(axis=1, ddof=1) * np.sqrt(24 * 365)
    ret_1h, ret_24h = nan.copy(), nan.copy()
    ret_1h[1:] = close[1:] / close[:-1] - 1
    ret_24h[day:] = close[day:] / close[:-day] - 1
    ratio = nan.copy()
    if n > week:
        ratio[week:] = volume[week:] / sliding_window_view(volume[:-1], week).mean(axis=1)
    price = (high + low + close) / 3 if vwap is None else vwap
    distance = nan.copy()
    vwap_24h = sliding_window_view(price * volume, day).sum(axis=1) / sliding_window_view(volume, day).sum(
        axis=1
    )
    distance[day - 1 :] = close[day - 1 :] / vwap_24h - 1
    return {
        "realized_vol_24h": vol,
        "ret_1h": ret_1h,
        "ret_24h": ret_24h,
        "volume_vs_avg_7d": ratio,
        "vwap_distance": distance,
    }


def test_time_window_features_match_an_independent_numpy_computation(hourly_features):
    for (symbol,), bars in hourly_features.group_by("symbol"):
        for name, expected in numpy_time_features(bars).items():
            ours = bars[name].to_numpy(allow_copy=True)
            np.testing.assert_array_equal(
                np.isnan(ours), np.isnan(expected), err_msg=f"{symbol} {name} nulls"
            )
            np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12, err_msg=f"{symbol} {name}")


def test_bar_vwap_replaces_the_typical_price_where_present():
    bars = synthetic(100)
    bar_vwap = ((bars["high"] + bars["low"]) / 2).to_numpy().copy()
    with_vwap = bars.with_columns(pl.Series("vwap", bar_vwap.copy()))
    ours = compute_features(with_vwap, "1h")["vwap_distance"].to_numpy(allow_copy=True)
    expected = numpy_time_features(bars, vwap=bar_vwap)["vwap_distance"]
    np.testing.assert_allclose(ours, expected, rtol=1e-9)
    # A missing bar vwap falls back to that bar's typical price.
    missing = with_vwap.with_columns(
        pl.when(pl.int_range(pl.len()) == 50).then(None).otherwise("vwap").alias("vwap")
    )
    bar_vwap[50] = (bars["high"][50] + bars["low"][50] + bars["close"][50]) / 3
    ours = compute_features(missing, "1h")["vwap_distance"].to_numpy(allow_copy=True)
    np.testing.assert_allclose(ours, numpy_time_features(bars, vwap=bar_vwap)["vwap_distance"], rtol=1e-9)


def test_returns_and_volatility_follow_the_bar_length_on_4h_and_daily_bars():
    four_hourly = compute_features(synthetic(60, step=timedelta(hours=4)), "4h")
    assert four_hourly["ret_1h"].null_count() == 60
    close = four_hourly["close"].to_numpy()
    np.testing.assert_allclose(
        four_hourly["ret_24h"].to_numpy(allow_copy=True)[6:], close[6:] / close[:-6] - 1
    )
    assert four_hourly["realized_vol_24h"].drop_nulls().len() == 60 - 6

    daily = compute_features(synthetic(30, step=timedelta(days=1)), "1d")
    close = daily["close"].to_numpy()
    np.testing.assert_allclose(daily["ret_24h"].to_numpy(allow_copy=True)[1:], close[1:] / close[:-1] - 1)
    assert daily["ret_1h"].null_count() == daily["realized_vol_24h"].null_count() == 30
    assert set(applicable_features("1d")) == set(FEATURE_COLUMNS) - {"ret_1h", "realized_vol_24h"}


def test_a_gap_nulls_the_time_windows_that_span_it_but_not_the_indicators():
    full = synthetic(400)
    gapped = full.filter(pl.col("timestamp") != T0 + timedelta(hours=300))
    out = compute_features(gapped, "1h")
    after_gap = out.filter(pl.col("timestamp") > T0 + timedelta(hours=300))
    # 24 bars back from the 24 bars after the gap is 25 hours back: null; from 25h after the gap it is back.
    spans_gap = after_gap["timestamp"] <= T0 + timedelta(hours=324)
    assert after_gap.filter(spans_gap)["ret_24h"].null_count() == 24
    assert after_gap.filter(~spans_gap)["ret_24h"].null_count() == 0
    assert after_gap["ret_1h"].null_count() == 1
    assert after_gap["ema_9"].null_count() == 0


# --- grouping, order, types ------------------------------------------------------------------------


def test_shuffled_multi_symbol_input_gives_the_per_symbol_results(binance: Path):
    bars = recorded_bars(binance, "1h", ("BTC/USDT", "DOGS/USDT", "SHIB/USDT"))
    shuffled = bars.sample(fraction=1.0, shuffle=True, seed=11)
    together = compute_features(shuffled, "1h")
    one_by_one = pl.concat(
        [
            compute_features(bars.filter(pl.col("symbol") == s), "1h")
            for s in ("BTC/USDT", "DOGS/USDT", "SHIB/USDT")
        ]
    )
    assert together.equals(one_by_one)
    assert together.select("symbol", "timestamp").equals(
        bars.sort("symbol", "timestamp").select("symbol", "timestamp")
    )


def test_output_is_the_input_columns_plus_float_features_and_warm():
    bars = synthetic(50).with_columns(
        pl.lit(None, pl.Float64).alias("vwap"),
        pl.lit(None, pl.Int64).alias("trade_count"),
        pl.lit("x").alias("note"),
    )
    out = compute_features(bars, Timeframe.H1)
    assert out.columns == [*bars.columns, *FEATURE_COLUMNS, "warm"]
    assert out.select(bars.columns).equals(bars)
    assert all(out.schema[name] == pl.Float64 for name in FEATURE_COLUMNS)
    assert out.schema["warm"] == pl.Boolean


def test_integer_volume_and_prices_are_accepted():
    bars = synthetic(80).with_columns(pl.col("volume").round().cast(pl.Int64))
    out = compute_features(bars, "1h")
    assert out.schema["volume"] == pl.Int64
    assert out["volume_vs_avg_7d"].drop_nulls().len() == 0  # 80 bars < 7 days
    assert out["vwap_distance"].drop_nulls().len() == 80 - 23


def test_empty_input_gives_an_empty_frame_with_all_columns():
    out = compute_features(synthetic(5).clear(), "1h")
    assert out.height == 0 and out.columns[-len(FEATURE_COLUMNS) - 1 :] == [*FEATURE_COLUMNS, "warm"]


# --- bad values ------------------------------------------------------------------------------------


def all_finite_or_null(frame: pl.DataFrame) -> bool:
    return bool(
        frame.select(pl.all_horizontal(pl.col(FEATURE_COLUMNS).is_finite().fill_null(True)).all()).item()
    )


def test_zero_volume_gives_nulls_never_infinities():
    bars = synthetic(400).with_columns(
        pl.when(pl.int_range(pl.len()).is_between(100, 399)).then(0.0).otherwise("volume").alias("volume")
    )
    out = compute_features(bars, "1h")
    assert all_finite_or_null(out)
    # 24h without volume: no VWAP; a zero-volume bar after a traded week: ratio 0; a dead week: null.
    assert out["vwap_distance"][130] is None and out["vwap_distance"][110] is not None
    assert out["volume_vs_avg_7d"][99] is None and out["volume_vs_avg_7d"][200] == 0.0
    assert out["volume_vs_avg_7d"][399] is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None])
def test_a_missing_price_nulls_only_what_depends_on_it_and_the_series_recovers(bad):
    bars = synthetic(700).with_columns(
        pl.when(pl.int_range(pl.len()) == 600).then(pl.lit(bad, pl.Float64)).otherwise("close").alias("close")
    )
    out = compute_features(bars, "1h")
    assert all_finite_or_null(out)
    row, later = out.row(600, named=True), out.row(650, named=True)
    assert row["ret_1h"] is None and row["bb_pctb_20"] is None and row["realized_vol_24h"] is None
    assert out["ret_1h"][601] is None and out["ret_1h"][602] is not None
    assert out["realized_vol_24h"][624] is None and out["realized_vol_24h"][625] is not None
    # The recursive averages step over the missing bar and go on; the volume features never needed it.
    assert all(later[name] is not None for name in FEATURE_COLUMNS)
    assert out["ema_9"][601] is not None and row["volume_vs_avg_7d"] is not None
    # Bars before the missing one are untouched.
    clean = compute_features(synthetic(700), "1h")
    assert out.head(600).equals(clean.head(600))


def test_a_missing_volume_nulls_the_volume_windows_only():
    bars = synthetic(600).with_columns(
        pl.when(pl.int_range(pl.len()) == 300).then(None).otherwise("volume").alias("volume")
    )
    out = compute_features(bars, "1h")
    assert out["vwap_distance"].slice(300, 24).null_count() == 24 and out["vwap_distance"][324] is not None
    ratio = out["volume_vs_avg_7d"]
    assert ratio.slice(300, 169).null_count() == 169 and ratio[299] is not None and ratio[469] is not None
    assert out["ema_50"].null_count() == 49 and out["atr_14"][300] is not None


# --- timeframes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("timeframe", ["5m", "1h", "1d"])
def test_timeframe_is_inferred_from_real_bars(binance: Path, timeframe):
    bars = recorded_bars(binance, timeframe, ("ETH/USDT", "WIF/USDT"))
    assert infer_timeframe(bars) is Timeframe.parse(timeframe)
    assert compute_features(bars).equals(compute_features(bars, timeframe))


def test_symbols_with_different_steps_make_the_timeframe_ambiguous():
    bars = pl.concat([synthetic(30), synthetic(30, symbol="BBB/USD", step=timedelta(minutes=15))])
    with pytest.raises(ValueError, match="ambiguous timeframe"):
        compute_features(bars)
    assert compute_features(bars.filter(pl.col("symbol") == "BBB/USD")).height == 30


def test_a_step_that_is_no_timeframe_or_a_single_bar_cannot_be_inferred():
    with pytest.raises(ValueError, match="matches no timeframe"):
        infer_timeframe(synthetic(30, step=timedelta(hours=2)))
    with pytest.raises(ValueError, match="no symbol has two bars"):
        infer_timeframe(synthetic(1))


def test_bars_closer_than_the_timeframe_or_duplicated_are_rejected():
    with pytest.raises(ValueError, match="shorter than the 4h timeframe"):
        compute_features(synthetic(30), "4h")
    bars = synthetic(30)
    with pytest.raises(ValueError, match="duplicate bars: AAA/USD"):
        compute_features(pl.concat([bars, bars.slice(10, 1)]), "1h")


def test_missing_or_non_numeric_columns_are_named():
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['volume'\]"):
        compute_features(synthetic(30).drop("volume"), "1h")
    with pytest.raises(ValueError, match="must be numeric"):
        compute_features(synthetic(30).with_columns(pl.col("close").cast(pl.String)), "1h")
    with pytest.raises(ValueError, match="unknown timeframe"):
        compute_features(synthetic(30), "7m")


# --- warm-up -------------------------------------------------------------------------------------------


def test_warm_starts_at_the_longest_warmup_of_each_symbol():
    bars = pl.concat([synthetic(600), synthetic(520, symbol="BBB/USD", seed=3)])
    out = compute_features(bars, "1h")
    needed = max(WARMUP_BARS[Timeframe.H1].values())
    for (symbol,), rows in out.group_by("symbol"):
        assert rows["warm"].arg_true()[0] == needed, symbol
        assert rows["warm"].slice(needed).all()


def test_warmup_can_be_replaced_and_rejects_unknown_features():
    out = compute_features(synthetic(100), "1h", warmup={"rsi_14": 14, "ema_21": 40})
    assert out["warm"].arg_true()[0] == 40
    with pytest.raises(ValueError, match="unknown feature"):
        compute_features(synthetic(100), "1h", warmup={"rsi_99": 5})


def test_every_feature_that_exists_at_a_timeframe_has_a_value_on_warm_rows():
    for timeframe, step, n in (
        ("1h", timedelta(hours=1), 600),
        ("4h", timedelta(hours=4), 600),
        ("1d", timedelta(days=1), 200),
    ):
        out = compute_features(synthetic(n, step=step), timeframe).filter("warm")
        assert out.height > 0, timeframe
        required = warmup_bars(timeframe)
        assert out.select(pl.col(list(required)).null_count()).sum_horizontal().item() == 0, timeframe
    assert "ema_200" not in warmup_bars("1d") and "ret_1h" not in warmup_bars("4h")


# --- multi-timeframe join ---------------------------------------------------------------------------


def hourly_and_four_hourly() -> tuple[pl.DataFrame, pl.DataFrame]:
    base = pl.DataFrame(
        {"symbol": ["A"] * 9, "timestamp": [T0 + timedelta(hours=h) for h in range(9)], "x": list(range(9))}
    )
    higher = pl.DataFrame(
        {
            "symbol": ["A", "A", "B"],
            "timestamp": [T0, T0 + timedelta(hours=4), T0],
            "rsi_14": [40.0, 60.0, 99.0],
        }
    )
    return base, higher


def test_a_higher_bar_reaches_the_base_bars_that_close_when_or_after_it_closes():
    base, higher = hourly_and_four_hourly()
    joined = join_higher_timeframes(base, {"4h": higher}, "1h", columns=["rsi_14"])
    by_hour = dict(zip(joined["timestamp"].dt.hour(), joined["rsi_14_4h"], strict=True))
    # The 00:00-04:00 bar closes at 04:00: the 03:00 bar (closing 04:00) sees it, the 02:00 bar does not.
    assert by_hour[2] is None and by_hour[3] == 40.0
    assert by_hour[6] == 40.0 and by_hour[7] == 60.0 and by_hour[8] == 60.0
    assert joined.columns == [*base.columns, "rsi_14_4h"]


def test_joined_values_stay_within_their_symbol_and_go_stale_after_one_higher_bar():
    base, higher = hourly_and_four_hourly()
    base_b = base.with_columns(pl.lit("B").alias("symbol"))
    joined = join_higher_timeframes(pl.concat([base, base_b]), {"4h": higher}, "1h", columns=["rsi_14"])
    b_values = joined.filter(pl.col("symbol") == "B")["rsi_14_4h"].to_list()
    # B's only 4h bar closes at 04:00 and is current until 08:00 (tolerance: one 4h bar).
    assert b_values == [None, None, None, 99.0, 99.0, 99.0, 99.0, 99.0, None]


def test_default_join_brings_each_higher_timeframes_features_and_warm_flag_from_real_bars(binance: Path):
    hourly = compute_features(recorded_bars(binance, "1h", ("ETH/USDT",)), "1h")
    four_hourly = compute_features(recorded_bars(binance, "4h", ("ETH/USDT",)), "4h")
    daily = compute_features(recorded_bars(binance, "1d", ("ETH/USDT",)), "1d")
    joined = join_higher_timeframes(hourly, {"4h": four_hourly, Timeframe.D1: daily}, "1h")
    assert joined.height == hourly.height
    assert "rsi_14_4h" in joined.columns and "warm_1d" in joined.columns and "ret_1h_4h" not in joined.columns
    assert joined.schema["warm_4h"] == pl.Boolean and joined["warm_4h"].null_count() == 0
    # Brute force on a sample of rows: the latest 4h bar that had closed when the 1h bar closed.
    closes = four_hourly["timestamp"] + timedelta(hours=4)
    for row in random.Random(5).sample(list(joined.iter_rows(named=True)), 60):
        visible = four_hourly.filter(closes <= row["timestamp"] + timedelta(hours=1))
        expected = visible["rsi_14"][-1] if visible.height else None
        assert row["rsi_14_4h"] == expected, row["timestamp"]


def test_join_rejects_a_timeframe_that_is_not_higher_and_missing_columns():
    base, higher = hourly_and_four_hourly()
    with pytest.raises(ValueError, match="not longer than the base timeframe"):
        join_higher_timeframes(base, {"1h": higher}, "1h", columns=["rsi_14"])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['macd'\]"):
        join_higher_timeframes(base, {"4h": higher}, "1h", columns=["macd"])
    naive = higher.with_columns(pl.col("timestamp").dt.replace_time_zone(None))
    with pytest.raises(ValueError, match="time zone None"):
        join_higher_timeframes(base, {"4h": naive}, "1h", columns=["rsi_14"])


def test_the_documented_hourly_warmup_table_is_the_one_in_use():
    assert WARMUP_BARS[Timeframe.H1] == {
        "rsi_14": 263, "rsi_21": 399, "macd": 273, "macd_signal": 273, "macd_hist": 273, "ema_9": 91,
        "ema_21": 214, "ema_50": 510, "ema_200": 199, "atr_14": 263, "bb_pctb_20": 19, "realized_vol_24h": 24,
        "ret_1h": 1, "ret_24h": 24, "volume_vs_avg_7d": 168, "vwap_distance": 23,
    }  # fmt: skip

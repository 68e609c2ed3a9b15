"""The compiled recursive-indicator kernel: TA-Lib's values to rounding, per symbol, and its handling of
missing values."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import talib

from crypto_pipeline.features.kernels import recursive_indicators

NAMES = (
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
)


def kernel(close: np.ndarray, high: np.ndarray, low: np.ndarray, starts: list[int]) -> dict[str, np.ndarray]:
    rows = recursive_indicators(
        close,
        high,
        low,
        starts,
        rsi_periods=(14, 21),
        macd_periods=(12, 26, 9),
        ema_periods=(9, 21, 50, 200),
        atr_period=14,
    )
    return dict(zip(NAMES, rows, strict=True))


def talib_values(close: np.ndarray, high: np.ndarray, low: np.ndarray) -> dict[str, np.ndarray]:
    macd, signal, hist = talib.MACD(close, 12, 26, 9)
    return {
        "rsi_14": talib.RSI(close, 14),
        "rsi_21": talib.RSI(close, 21),
        "macd": macd,
        "macd_signal": signal,
        "macd_hist": hist,
        **{f"ema_{n}": talib.EMA(close, n) for n in (9, 21, 50, 200)},
        "atr_14": talib.ATR(high, low, close, 14),
    }


def test_every_symbol_matches_talib_to_rounding_in_one_call(recorded):
    bars = (
        pl.read_parquet(recorded("binance-spot-2024", "bars_1h.parquet"))
        .filter(pl.col("symbol").is_in(["BTC/USDT", "EURI/USDT", "PEPE/USDT", "SOL/USDT"]))
        .sort("symbol", "timestamp")
    )
    close, high, low = (bars[name].to_numpy() for name in ("close", "high", "low"))
    starts = bars.select(pl.col("symbol").rle_id().arg_unique()).to_series().to_list()
    assert len(starts) == 4
    ours = kernel(close, high, low, starts)
    for begin, end in zip(starts, [*starts[1:], bars.height], strict=True):
        expected = talib_values(close[begin:end], high[begin:end], low[begin:end])
        for name in NAMES:
            mine, theirs = ours[name][begin:end], expected[name]
            assert np.array_equal(np.isnan(mine), np.isnan(theirs)), name
            # MACD crosses zero: compare it in price units.
            atol = 1e-12 * close[begin:end].max() if name.startswith("macd") else 0.0
            np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=atol, err_msg=name)


def test_a_missing_value_is_stepped_over_and_a_gap_in_the_seed_window_defers_the_start():
    close = 100.0 + np.sin(np.arange(60.0))
    high, low = close + 1.0, close - 1.0
    clean = kernel(close, high, low, [0])
    holed = close.copy()
    holed[40] = np.nan
    stepped = kernel(holed, high, low, [0])
    # EMA-9 at bar 40 is missing; bar 41 applies one update to the bar-39 value.
    alpha = 2.0 / 10.0
    assert np.isnan(stepped["ema_9"][40])
    assert stepped["ema_9"][41] == pytest.approx(
        (close[41] - clean["ema_9"][39]) * alpha + clean["ema_9"][39]
    )
    np.testing.assert_array_equal(stepped["ema_9"][:40], clean["ema_9"][:40])
    # A missing close inside EMA-9's seed window (bars 0..8): no seed, the average starts from bar 9's close.
    early = close.copy()
    early[3] = np.nan
    deferred = kernel(early, high, low, [0])
    assert np.isnan(deferred["ema_9"][:9]).all()
    assert deferred["ema_9"][9] == close[9]
    assert deferred["ema_9"][10] == pytest.approx((close[10] - close[9]) * alpha + close[9])


def test_symbols_do_not_leak_into_each_other_and_short_ones_get_no_values():
    rng = np.random.default_rng(7)
    close = 50.0 + rng.standard_normal(300).cumsum() * 0.1
    high, low = close + 0.5, close - 0.5
    alone = kernel(close[:250], high[:250], low[:250], [0])
    together = kernel(close, high, low, [0, 250])  # a second symbol of 50 bars after it
    for name in NAMES:
        np.testing.assert_array_equal(together[name][:250], alone[name])
    assert np.isnan(together["ema_200"][250:]).all() and not np.isnan(together["ema_9"][258:]).any()

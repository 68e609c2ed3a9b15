"""Feature library speed: `compute_features` over the 756k 1-hour bars of 136 pairs, against a per-symbol
TA-Lib loop (plus numpy for the rolling features) computing the same columns, measured in the same run.

Both sides run once before the timing (the parity check below): that call also compiles our numba kernel
(or loads it from numba's on-disk cache), so no JIT compilation is timed. Ours uses polars' threads and
runs its recursive-average kernel on a thread beside them; the TA-Lib loop is single-threaded, as in a
freqtrade strategy.

Run: ``.venv/bin/python bench/bench_features.py [--quick]``
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import talib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import BenchResult, best_of, print_table  # noqa: E402
from crypto_pipeline.config import SHARED_MARKET_DATA  # noqa: E402
from crypto_pipeline.features import FEATURE_COLUMNS, compute_features  # noqa: E402

BARS_1H = SHARED_MARKET_DATA / "binance-spot-2024" / "bars_1h.parquet"
QUICK_SYMBOLS = 20
HOURS_PER_YEAR = 24 * 365


def _trailing_sum(values: np.ndarray, window: int) -> np.ndarray:
    """Sum of the last `window` values (NaN until full), by cumulative sums: the usual numpy idiom."""
    out = np.full_like(values, np.nan)
    if len(values) >= window:
        cumulative = np.concatenate(([0.0], np.cumsum(values)))
        out[window - 1 :] = cumulative[window:] - cumulative[:-window]
    return out


def talib_reference(bars: pl.DataFrame) -> pl.DataFrame:
    """The same feature columns with TA-Lib per symbol, the way a freqtrade-style strategy computes them."""
    columns = {name: bars[name].to_numpy() for name in ("high", "low", "close", "volume")}
    symbols = bars["symbol"].to_numpy()
    boundaries = np.flatnonzero(symbols[1:] != symbols[:-1]) + 1
    starts, ends = np.concatenate(([0], boundaries)), np.concatenate((boundaries, [len(symbols)]))
    out = {name: np.full(len(symbols), np.nan) for name in FEATURE_COLUMNS}
    for start, end in zip(starts, ends, strict=True):
        high, low = columns["high"][start:end], columns["low"][start:end]
        close, volume = columns["close"][start:end], columns["volume"][start:end]
        rows = slice(start, end)
        out["rsi_14"][rows] = talib.RSI(close, 14)
        out["rsi_21"][rows] = talib.RSI(close, 21)
        out["macd"][rows], out["macd_signal"][rows], out["macd_hist"][rows] = talib.MACD(close, 12, 26, 9)
        for n in (9, 21, 50, 200):
            out[f"ema_{n}"][rows] = talib.EMA(close, n)
        out["atr_14"][rows] = talib.ATR(high, low, close, 14)
        upper, _, lower = talib.BBANDS(close, 20, 2.0, 2.0)
        out["bb_pctb_20"][rows] = (close - lower) / (upper - lower)
        log_return = np.diff(np.log(close), prepend=np.nan)
        clean = np.nan_to_num(log_return)
        s1, s2 = _trailing_sum(clean, 24), _trailing_sum(clean * clean, 24)
        vol = np.sqrt(np.maximum((s2 - s1 * s1 / 24) / 23, 0.0)) * np.sqrt(HOURS_PER_YEAR)
        vol[:24] = np.nan
        out["realized_vol_24h"][rows] = vol
        ret_1h, ret_24h = np.full_like(close, np.nan), np.full_like(close, np.nan)
        ret_1h[1:] = close[1:] / close[:-1] - 1
        ret_24h[24:] = close[24:] / close[:-24] - 1
        out["ret_1h"][rows], out["ret_24h"][rows] = ret_1h, ret_24h
        ratio = np.full_like(close, np.nan)
        week_volume = _trailing_sum(volume, 168)
        ratio[168:] = volume[168:] / (week_volume[167:-1] / 168)
        out["volume_vs_avg_7d"][rows] = ratio
        typical = (high + low + close) / 3
        out["vwap_distance"][rows] = (
            close / (_trailing_sum(typical * volume, 24) / _trailing_sum(volume, 24)) - 1
        )
    return bars.with_columns(pl.DataFrame(out))


def _interleaved_best(functions: dict[str, Callable[[], object]], repeat: int = 3) -> dict[str, float]:
    """Best wall time of each function over `repeat` rounds, alternating them so that a busy neighbour
    on the machine slows all of them alike."""
    best = {name: float("inf") for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            best[name] = min(best[name], best_of(function, repeat=1))
    return best


def run(quick: bool = False) -> list[BenchResult]:
    bars = pl.read_parquet(BARS_1H).sort("symbol", "timestamp")
    if quick:
        bars = bars.filter(
            pl.col("symbol").is_in(bars["symbol"].unique().sort().head(QUICK_SYMBOLS).implode())
        )
    ours, reference = compute_features(bars, "1h"), talib_reference(bars)  # also the JIT warm-up
    for name in ("ema_50", "atr_14", "macd_signal"):  # the two sides compute the same thing
        np.testing.assert_allclose(ours[name].to_numpy(), reference[name].to_numpy(), rtol=1e-9)
    best = _interleaved_best(
        {"ours": lambda: compute_features(bars, "1h"), "reference": lambda: talib_reference(bars)}
    )
    symbols = bars["symbol"].n_unique()
    return [
        BenchResult(
            name=f"compute_features, 1h bars ({bars.height:,} rows, {symbols} symbols)",
            figure=bars.height / best["ours"],
            unit="rows/s",
            reference_name="per-symbol TA-Lib + numpy loop",
            reference=bars.height / best["reference"],
            target=">= 1.0x reference",
            note=(
                f"best of 3: {best['ours'] * 1000:.0f} ms vs {best['reference'] * 1000:.0f} ms; "
                "16 features + warm; JIT warmed up, not timed"
            ),
        )
    ]


if __name__ == "__main__":
    print_table(run(quick="--quick" in sys.argv))

"""TA-Lib's recursive indicators (RSI, MACD, EMA, ATR) for many symbols in one compiled pass.

A recursive average cannot be vectorised: each value needs the previous one, so its cost is the latency
of one update per bar, and polars' ``ewm_mean`` pays it about 3-4x slower per value than TA-Lib's C loop.
This kernel walks every symbol's bars once and advances all the averages together on each bar: their
chains are independent, so the CPU overlaps them, and the whole set costs little more than one.

The arithmetic is TA-Lib's (seed sums in bar order, the same update formulas, compiled allowing fused
multiply-adds as the ``talib`` wheel is): EMA and MACD equal ``talib``'s bit for bit on a CPU with FMA, RSI
and ATR agree to ~1e-14.

Missing values are NaN in and out. An average steps over a missing input (missing output there, state
unchanged); a seed window holding a missing value gives no seed, and the average then starts from the first
value after the seed bar.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

# "contract" lets LLVM fuse a multiply and an add as TA-Lib's C build does; nothing is reordered.
_JIT = {"cache": True, "nogil": True, "fastmath": {"contract"}}


@njit(inline="always", **_JIT)
def _advance(
    states: np.ndarray,
    totals: np.ndarray,
    k: int,
    bar: int,
    value: float,
    seed_at: int,
    window: int,
    alpha: float,
    wilder_period: float,
    seeding: bool,
) -> float:
    """Average `k`'s value on `bar` (NaN before its seed bar), given that bar's input `value`; `seeding`
    is False once every average is past its seed bar.

    The seed on bar `seed_at` is the mean of the `window` inputs ending there, summed in bar order as
    TA-Lib does. After it: Wilder's ``avg = (avg * (n - 1) + x) / n`` when `wilder_period` is n > 0 (RSI,
    ATR), else the EMA's ``avg = (x - avg) * alpha + avg``. `alpha` and `wilder_period` come as floats
    computed once: a division or conversion per bar doubles the cost of the whole kernel.
    """
    if seeding:
        if bar < seed_at:
            if bar > seed_at - window:
                totals[k] += value
            return np.nan
        if bar == seed_at:
            states[k] = (totals[k] + value) / window  # NaN when the window holds a missing value: no seed
            return states[k]
    if np.isnan(value):
        return np.nan
    average = states[k]
    if np.isnan(average):
        average = value
    elif wilder_period > 0.0:
        average = (average * (wilder_period - 1.0) + value) / wilder_period
    else:
        average = (value - average) * alpha + average
    states[k] = average
    return average


@njit(inline="always", **_JIT)
def _bar(
    close: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    row: int,
    bar: int,
    rsi_periods: np.ndarray,
    macd_periods: tuple[int, int, int],
    ema_periods: np.ndarray,
    atr_period: int,
    alphas: np.ndarray,
    states: np.ndarray,
    totals: np.ndarray,
    out: np.ndarray,
    seeding: bool,
) -> None:
    """Advances every average by one bar (the symbol's bar number `bar`, at `row`) and writes the
    indicators' values there. `alphas` holds the MACD fast, slow and signal EMAs' then the EMAs'."""
    price = close[row]
    previous = close[row - 1] if bar > 0 else price  # bar 0: no change
    change = price - previous
    gain = change if change > 0.0 else 0.0
    loss = -change if change < 0.0 else 0.0
    if np.isnan(change):
        gain = loss = np.nan
    # TA-Lib's max(high - low, |high - prev|, |low - prev|); a missing value is left out.
    top, bottom = high[row], low[row]
    if not np.isnan(previous):
        if np.isnan(top) or previous > top:
            top = previous
        if np.isnan(bottom) or previous < bottom:
            bottom = previous

    out_row, k = 0, 0  # the next output row and the next average's state
    for j in range(len(rsi_periods)):
        n, wilder = rsi_periods[j], float(rsi_periods[j])
        average_gain = _advance(states, totals, k, bar, gain, n, n, 0.0, wilder, seeding)
        average_loss = _advance(states, totals, k + 1, bar, loss, n, n, 0.0, wilder, seeding)
        total = average_gain + average_loss
        out[out_row + j, row] = 100.0 * (average_gain / total) if total != 0.0 else np.nan
        k += 2
    out_row += len(rsi_periods)

    fast_period, slow_period, signal_period = macd_periods
    macd_seed_at = slow_period - 1  # TA-Lib seeds the fast EMA where the slow one starts
    signal_seed_at = macd_seed_at + signal_period - 1
    fast = _advance(states, totals, k, bar, price, macd_seed_at, fast_period, alphas[0], 0.0, seeding)
    slow = _advance(states, totals, k + 1, bar, price, macd_seed_at, slow_period, alphas[1], 0.0, seeding)
    line = fast - slow  # NaN before the slow EMA's seed bar
    signal = _advance(
        states, totals, k + 2, bar, line, signal_seed_at, signal_period, alphas[2], 0.0, seeding
    )
    out[out_row, row] = line if bar >= signal_seed_at else np.nan
    out[out_row + 1, row] = signal
    out[out_row + 2, row] = line - signal
    out_row += 3
    k += 3

    for j in range(len(ema_periods)):
        n = ema_periods[j]
        out[out_row + j, row] = _advance(
            states, totals, k + j, bar, price, n - 1, n, alphas[3 + j], 0.0, seeding
        )
    out_row += len(ema_periods)
    k += len(ema_periods)

    true_range = top - bottom
    out[out_row, row] = _advance(
        states, totals, k, bar, true_range, atr_period, atr_period, 0.0, float(atr_period), seeding
    )


def recursive_indicators(
    close: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    starts: Sequence[int] | np.ndarray,
    *,
    rsi_periods: Sequence[int],
    macd_periods: tuple[int, int, int],
    ema_periods: Sequence[int],
    atr_period: int,
) -> np.ndarray:
    """Rows of RSI (one per period), MACD line, signal and histogram, EMA (one per period) and ATR, for
    rows grouped by symbol in time order; `starts` holds the row of each symbol's first bar. See the
    compiled kernel `_recursive_indicators`."""
    if len(close) == 0:
        return np.empty((len(rsi_periods) + 3 + len(ema_periods) + 1, 0))
    return _recursive_indicators(
        _read_only(close),
        _read_only(high),
        _read_only(low),
        np.asarray(starts, dtype=np.int64),
        np.asarray(rsi_periods, dtype=np.int64),
        (int(macd_periods[0]), int(macd_periods[1]), int(macd_periods[2])),
        np.asarray(ema_periods, dtype=np.int64),
        int(atr_period),
    )


def _read_only(values: np.ndarray) -> np.ndarray:
    """`values` as a read-only C-contiguous float64 array (a view where possible). Every caller then hits
    one compiled, cached signature (polars hands out read-only views of null-free columns) instead of
    paying seconds of compilation per variant."""
    array = np.ascontiguousarray(values, dtype=np.float64)
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


@njit(**_JIT)
def _recursive_indicators(
    close: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    starts: np.ndarray,
    rsi_periods: np.ndarray,
    macd_periods: tuple[int, int, int],
    ema_periods: np.ndarray,
    atr_period: int,
) -> np.ndarray:
    """Rows of RSI (one per period), MACD line, signal and histogram, EMA (one per period) and ATR, for
    rows grouped by symbol in time order; `starts` holds the row of each symbol's first bar. A symbol's
    values depend on its own rows only.

    As in TA-Lib: the changes of bars 1..n seed RSI-n on bar n; MACD's fast EMA is seeded where the slow
    one starts (bar slow - 1) and the signal EMA on the MACD line, which all three show from the signal's
    seed bar on; ATR-n averages the true ranges of bars 1..n first (bar 0 has no previous close). RSI is
    NaN where the average gain and loss are both zero (undefined; TA-Lib says 0).
    """
    height = close.shape[0]
    out = np.empty((len(rsi_periods) + 3 + len(ema_periods) + 1, height))
    averages = 2 * len(rsi_periods) + 3 + len(ema_periods) + 1
    states, totals = np.empty(averages), np.empty(averages)
    fast_period, slow_period, signal_period = macd_periods
    alphas = np.empty(3 + len(ema_periods))
    alphas[0], alphas[1], alphas[2] = (
        2.0 / (fast_period + 1),
        2.0 / (slow_period + 1),
        2.0 / (signal_period + 1),
    )
    alphas[3:] = 2.0 / (ema_periods + 1)
    last_seed_at = max(
        np.max(rsi_periods), slow_period + signal_period - 2, np.max(ema_periods) - 1, atr_period
    )
    for symbol in range(len(starts)):
        begin = starts[symbol]
        end = starts[symbol + 1] if symbol + 1 < len(starts) else height
        totals[:] = 0.0
        # The same step in two loops: the one past every seed bar compiles without the seeding branches.
        seeded_from = min(end - begin, last_seed_at + 1)
        for bar in range(seeded_from):
            _bar(
                close,
                high,
                low,
                begin + bar,
                bar,
                rsi_periods,
                macd_periods,
                ema_periods,
                atr_period,
                alphas,
                states,
                totals,
                out,
                True,
            )
        for bar in range(seeded_from, end - begin):
            _bar(
                close,
                high,
                low,
                begin + bar,
                bar,
                rsi_periods,
                macd_periods,
                ema_periods,
                atr_period,
                alphas,
                states,
                totals,
                out,
                False,
            )
    return out

"""`ema_cross` over a parameter grid, every (fast, slow) pair on every symbol in one compiled pass.

A parameter sweep only needs each run's final equity and trade count, not vectorbt's order records and
value series; building those for hundreds of columns costs far more than the strategy itself. This
module computes each EMA once per span (the same `engine.ema`, so the same numbers), and a numba
kernel replays exactly what `engine.backtest_long_signals` asks of `vbt.Portfolio.from_signals`: long
while EMA(fast) > EMA(slow) at the close of bar t, filled at the open of bar t+1 (a symbol without a
bar then does not trade: the order waits for its next bar), fully invested, fees and slippage as vectorbt applies them, valued at the last close.
`tests/backtest/test_grid.py` checks it against `from_signals`, column by column."""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import pandas as pd

from crypto_pipeline.backtest.engine import DEFAULT_FEE_BPS, INIT_CASH, ema
from crypto_pipeline.errors import UserInputError


@numba.njit(cache=True, nogil=True)
def _simulate_nb(
    emas: np.ndarray,  # (spans, symbols, bars): contiguous along time
    fast_idx: np.ndarray,
    slow_idx: np.ndarray,
    price: np.ndarray,  # (symbols, bars): the fill price, the open (NaN in a gap: no trade)
    last_close: np.ndarray,  # (symbols,)
    fee: float,
    slippage: float,
    init_cash: float,
) -> tuple[np.ndarray, np.ndarray]:
    n_pairs = fast_idx.shape[0]
    n_symbols, n_bars = price.shape
    final = np.empty((n_pairs, n_symbols))
    trades = np.zeros((n_pairs, n_symbols), dtype=np.int64)
    for p in range(n_pairs):
        for j in range(n_symbols):
            fast = emas[fast_idx[p], j]
            slow = emas[slow_idx[p], j]
            cash = init_cash
            qty = 0.0
            for t in range(1, n_bars):
                if fast[t - 1] > slow[t - 1]:  # NaN (before the first close) compares False: flat
                    if qty == 0.0 and price[j, t] == price[j, t]:
                        # vectorbt's buy of "all cash": cash / (1 + fee) buys at the slipped price
                        qty = cash / (1.0 + fee) / (price[j, t] * (1.0 + slippage))
                        cash = 0.0
                        trades[p, j] += 1
                elif qty > 0.0 and price[j, t] == price[j, t]:
                    proceeds = qty * (price[j, t] * (1.0 - slippage))
                    cash = cash + (proceeds - proceeds * fee)
                    qty = 0.0
            final[p, j] = cash + qty * last_close[j] if qty > 0.0 else cash
    return final, trades


def ema_cross_grid(
    open_: pd.DataFrame,
    close: pd.DataFrame,
    pairs: Sequence[tuple[int, int]],
    *,
    fee_bps: float = DEFAULT_FEE_BPS,
    slippage_bps: float = 0.0,
    init_cash: float = INIT_CASH,
) -> pd.DataFrame:
    """Final equity and trade count of `ema_cross` for every (fast, slow) in `pairs` on every column
    of `close` (time x symbol, as `engine.wide` builds it), each run its own account of `init_cash`.
    Returns one row per (fast, slow, symbol)."""
    if not pairs:
        raise UserInputError("no (fast, slow) pairs given")
    bad = [(f, s) for f, s in pairs if not 1 <= f < s]
    if bad:
        raise UserInputError(f"fast must be below slow (and >= 1): {bad}")
    spans = sorted({span for pair in pairs for span in pair})
    position = {span: i for i, span in enumerate(spans)}
    # One EMA per span over every symbol at once (pandas' recursive EWM, exactly `engine.ema`).
    emas = np.stack([np.ascontiguousarray(ema(close, span).to_numpy(np.float64).T) for span in spans])
    filled = close.ffill()
    price = np.ascontiguousarray(open_.to_numpy(np.float64).T)
    last_close = filled.iloc[-1].to_numpy(np.float64)
    final, trades = _simulate_nb(
        emas,
        np.array([position[f] for f, _ in pairs], dtype=np.int64),
        np.array([position[s] for _, s in pairs], dtype=np.int64),
        price,
        last_close,
        fee_bps / 10_000,
        slippage_bps / 10_000,
        float(init_cash),
    )
    symbols = list(close.columns)
    return pd.DataFrame(
        {
            "fast": np.repeat([f for f, _ in pairs], len(symbols)),
            "slow": np.repeat([s for _, s in pairs], len(symbols)),
            "symbol": symbols * len(pairs),
            "final_equity": final.ravel(),
            "trades": trades.ravel(),
        }
    )

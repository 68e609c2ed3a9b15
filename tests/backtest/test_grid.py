"""The grid kernel is `ema_cross` exactly: the same final equity and trades as `from_signals`, per column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from crypto_pipeline.backtest.engine import backtest_long_signals, ema_cross_long, load_bars, wide
from crypto_pipeline.backtest.grid import ema_cross_grid
from crypto_pipeline.config import SHARED_MARKET_DATA
from crypto_pipeline.errors import UserInputError

DATA = SHARED_MARKET_DATA / "binance-spot-2024"


def _check_against_vectorbt(open_: pd.DataFrame, close: pd.DataFrame, pairs, **costs) -> None:  # noqa: ANN001
    grid = ema_cross_grid(open_, close, pairs, **costs)
    assert len(grid) == len(pairs) * close.shape[1]
    for fast, slow in pairs:
        pf = backtest_long_signals(open_, close, ema_cross_long(close, fast, slow), **costs)
        ours = grid[(grid.fast == fast) & (grid.slow == slow)].set_index("symbol")
        np.testing.assert_allclose(
            ours.loc[list(close.columns), "final_equity"], pf.final_value().to_numpy(), rtol=1e-12
        )
        orders = pf.orders.records_arr
        buys = np.bincount(orders["col"][orders["side"] == 0], minlength=close.shape[1])
        assert list(ours.loc[list(close.columns), "trades"]) == list(buys)
    assert grid["trades"].sum() > 0  # the comparison saw trades, not only flat accounts


@pytest.mark.requires_data("binance-spot-2024")
def test_grid_equals_from_signals_on_real_5m_bars_with_a_late_listing() -> None:
    # NOT/USDT starts trading inside the range: its first bars are missing (NaN EMAs, no fills).
    bars = load_bars(["BTC/USDT", "NOT/USDT", "ENA/USDT"], "5m", "2024-05-10", "2024-06-10", DATA)
    open_, close = wide(bars, "open"), wide(bars, "close")
    assert close["NOT/USDT"].isna().any()
    _check_against_vectorbt(open_, close, [(5, 9), (9, 21), (13, 55)], fee_bps=25, slippage_bps=5)


def test_grid_equals_from_signals_across_gaps() -> None:
    rng = np.random.default_rng(1)
    index = pd.date_range("2024-01-01", periods=600, freq="5min", tz="UTC")
    close = pd.DataFrame(
        np.exp(np.cumsum(rng.normal(0, 0.01, (600, 2)), axis=0)) * 100, index=index, columns=["A", "B"]
    )
    open_ = close.shift(1).fillna(close) * (1 + rng.normal(0, 0.001, (600, 2)))
    close.iloc[200:210, 0] = np.nan  # a gap: no bar, so no open either
    open_.iloc[200:211, 0] = np.nan
    _check_against_vectorbt(open_, close, [(3, 7), (9, 21)], fee_bps=10, slippage_bps=0)


def test_grid_rejects_bad_pairs() -> None:
    frame = pd.DataFrame({"X": [1.0, 2.0]})
    with pytest.raises(UserInputError, match="fast must be below slow"):
        ema_cross_grid(frame, frame, [(21, 9)])
    with pytest.raises(UserInputError, match="no"):
        ema_cross_grid(frame, frame, [])

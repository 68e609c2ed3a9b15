"""The engine's conventions, proved on a hand-computed case and against backtesting.py on real data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from crypto_pipeline.backtest.engine import (
    backtest_long_signals,
    ema,
    ema_cross_long,
    load_bars,
    wide,
)
from crypto_pipeline.config import SHARED_MARKET_DATA
from crypto_pipeline.errors import UserInputError

DATA = SHARED_MARKET_DATA / "binance-spot-2024"
needs_data = pytest.mark.requires_data("binance-spot-2024")


def test_decision_at_close_fills_at_next_open_with_fees_as_computed_by_hand() -> None:
    index = pd.date_range("2024-01-01", periods=5, freq="1h", tz="UTC")
    open_ = pd.DataFrame({"X": [10.0, 11.0, 12.0, 13.0, 14.0]}, index=index)
    close = pd.DataFrame({"X": [10.5, 11.5, 12.5, 13.5, 14.5]}, index=index)
    long = pd.DataFrame({"X": [True, True, False, False, False]}, index=index)
    pf = backtest_long_signals(open_, close, long, fee_bps=100, init_cash=1000)
    # Signal at close of bar 0 -> buy at open of bar 1 (11.0) with 1% fee; exit signal at close of bar 2
    # -> sell at open of bar 3 (13.0) with 1% fee.
    qty = 1000 / (11.0 * 1.01)
    cash = qty * 13.0 * 0.99
    value = pf.value()["X"]
    assert value.iloc[-1] == pytest.approx(cash, rel=1e-12)
    orders = pf.orders.records_arr
    assert list(orders["idx"]) == [1, 3]
    assert list(orders["price"]) == [11.0, 13.0]
    # The value while holding is marked at the close.
    assert value.iloc[2] == pytest.approx(qty * 12.5, rel=1e-12)


def test_a_signal_on_the_last_bar_never_trades() -> None:
    index = pd.date_range("2024-01-01", periods=3, freq="1h", tz="UTC")
    prices = pd.DataFrame({"X": [1.0, 2.0, 3.0]}, index=index)
    long = pd.DataFrame({"X": [False, False, True]}, index=index)
    pf = backtest_long_signals(prices, prices, long, fee_bps=0, init_cash=100)
    assert len(pf.orders.records_arr) == 0


@needs_data
def test_bad_input_gets_a_clear_error() -> None:
    with pytest.raises(UserInputError, match="unknown symbol"):
        load_bars(["NOPE/USDT"], "1h", "2024-01-01", "2024-02-01", DATA)
    with pytest.raises(UserInputError, match="before end"):
        load_bars(["BTC/USDT"], "1h", "2024-03-01", "2024-02-01", DATA)
    with pytest.raises(UserInputError, match="no 1h bars"):
        load_bars(["BTC/USDT"], "1h", "2030-01-01", "2030-02-01", DATA)
    with pytest.raises(UserInputError, match="fast"):
        ema_cross_long(pd.DataFrame({"X": [1.0, 2.0]}), 21, 9)


@needs_data
def test_ema_cross_matches_backtesting_py_on_real_btc_data() -> None:
    """The issue's correctness test: BTC/USDT 1h, 2024-01 to 2024-09, EMA 9/21, 25 bps, cash 10,000."""
    from backtesting import Strategy
    from backtesting.lib import FractionalBacktest

    bars = load_bars(["BTC/USDT"], "1h", "2024-01-01", "2024-10-01", DATA)
    open_, close = wide(bars, "open"), wide(bars, "close")
    pf = backtest_long_signals(open_, close, ema_cross_long(close, 9, 21), fee_bps=25, init_cash=10_000)

    frame = bars.to_pandas().set_index("timestamp")[["open", "high", "low", "close", "volume"]]
    frame.columns = ["Open", "High", "Low", "Close", "Volume"]

    class EmaCross(Strategy):
        def init(self) -> None:
            closes = pd.DataFrame(pd.Series(self.data.Close))
            self.fast = self.I(lambda: ema(closes, 9).iloc[:, 0].to_numpy())
            self.slow = self.I(lambda: ema(closes, 21).iloc[:, 0].to_numpy())

        def next(self) -> None:
            if self.fast[-1] > self.slow[-1]:
                if not self.position:
                    self.buy()
            elif self.position:
                self.position.close()

    ref = FractionalBacktest(
        frame, EmaCross, cash=10_000, commission=0.0025, trade_on_close=False, fractional_unit=1e-9
    ).run()
    ours = pf.trades.records_readable
    theirs = ref["_trades"]
    assert len(ours) == len(theirs) > 50
    assert list(ours["Entry Timestamp"]) == list(theirs["EntryTime"])
    assert list(ours["Exit Timestamp"].iloc[:-1]) == list(theirs["ExitTime"].iloc[:-1])
    np.testing.assert_allclose(ours["Avg Entry Price"], theirs["EntryPrice"], rtol=1e-9)
    final = float(pf.value()["BTC/USDT"].iloc[-1])
    assert final == pytest.approx(ref["Equity Final [$]"], rel=1e-3)


def test_folds_are_purged_embargoed_and_start_after_the_training_cutoff() -> None:
    from crypto_pipeline.backtest.folds import walk_forward_folds

    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 9, 1, tzinfo=UTC)
    purge, embargo = timedelta(hours=24), timedelta(hours=12)
    folds = walk_forward_folds(start, end, n_folds=4, purge=purge, embargo=embargo)
    assert [f.key for f in folds] == ["fold-00", "fold-01", "fold-02", "fold-03"]
    assert folds[-1].test_end == end
    for before, after in zip(folds, folds[1:], strict=False):
        assert before.test_end == after.test_start
    for fold in folds:
        assert fold.train_end + purge + embargo == fold.test_start
        assert fold.train_start == start  # expanding
    rolling = walk_forward_folds(start, end, n_folds=2, train_window=timedelta(days=30))
    assert all(f.train_end - f.train_start == timedelta(days=30) for f in rolling)
    cutoff = folds[1].test_start
    late = walk_forward_folds(start, end, n_folds=4, purge=purge, embargo=embargo, training_cutoff=cutoff)
    assert [f.key for f in late] == ["fold-02", "fold-03"]
    with pytest.raises(ValueError, match="not before"):
        walk_forward_folds(end, start)

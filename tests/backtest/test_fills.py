"""Fills as the venue would make them: inside the bar they trade in, and never in an hour a symbol has no
bar (the simulated venue of rules/LLM runs, and the signal engine; `test_grid.py` holds the grid, which
replays the signal engine, to the same rule across gaps)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from crypto_pipeline.backtest.engine import backtest_long_signals
from crypto_pipeline.execution.simulated import SimulatedVenue
from crypto_pipeline.trading import OrderIntent, OrderSide

IDX = pd.date_range("2024-09-06 10:00", periods=4, freq="h", tz="UTC")


def _venue(opens: list[float], highs: list[float], lows: list[float], volume: float = 1.0) -> SimulatedVenue:
    frame = lambda v: pd.DataFrame({"ETH/USDT": v}, index=IDX)  # noqa: E731
    return SimulatedVenue(
        frame(opens), frame([volume] * 4), init_cash=1e6, fee_bps=25, highs=frame(highs), lows=frame(lows)
    )


def test_impact_never_takes_a_fill_outside_its_bar() -> None:
    # The bar opens at its high; a buy of half the bar's volume would pay 5% impact above it.
    venue = _venue([100, 100, 100, 100], [101, 100, 101, 101], [99, 95, 99, 99])
    venue.mark({"ETH/USDT": 100.0})
    venue.submit(
        OrderIntent(symbol="ETH/USDT", side=OrderSide.BUY, qty=0.5),
        "b1",
        datetime(2024, 9, 6, 11, tzinfo=UTC),
    )
    venue.fill_pending(IDX[1])
    [fill] = venue.fills
    assert fill.price == 100.0  # the bar's high, not 105
    venue.submit(
        OrderIntent(symbol="ETH/USDT", side=OrderSide.SELL, qty=0.5),
        "s1",
        datetime(2024, 9, 6, 12, tzinfo=UTC),
    )
    venue.fill_pending(IDX[2])
    assert venue.fills[-1].price == 99.0  # the bar's low, not 95


def test_a_symbol_without_a_bar_does_not_trade_then() -> None:
    venue = _venue([100, np.nan, 100, 100], [101, np.nan, 101, 101], [99, np.nan, 99, 99])
    venue.mark({"ETH/USDT": 100.0})
    venue.submit(
        OrderIntent(symbol="ETH/USDT", side=OrderSide.BUY, qty=0.01),
        "b1",
        datetime(2024, 9, 6, 11, tzinfo=UTC),
    )
    venue.fill_pending(IDX[1])
    assert venue.fills == []


def test_a_signal_in_a_gap_fills_at_the_next_bar_of_that_symbol() -> None:
    close = pd.DataFrame({"ETH/USDT": [10.0, 11.0, np.nan, 13.0]}, index=IDX)
    open_ = pd.DataFrame({"ETH/USDT": [10.0, 10.5, np.nan, 12.5]}, index=IDX)
    long = pd.DataFrame({"ETH/USDT": [False, True, True, True]}, index=IDX)
    pf = backtest_long_signals(open_, close, long, fee_bps=0)
    [order] = pf.orders.records_readable.to_dict("records")
    assert order["Timestamp"] == IDX[3] and order["Price"] == 12.5  # not at 12:00, which has no bar


def test_the_exchange_fills_a_working_order_inside_its_bar_too() -> None:
    from crypto_pipeline.exchange.bars import NS_PER_S
    from crypto_pipeline.exchange.book import BarView
    from crypto_pipeline.exchange.matching import fill_against_bar
    from crypto_pipeline.trading.rules import SlippageModel

    # Opens at its high (100); a remainder of 5 against a volume of 50 would pay 1% impact plus the spread.
    bar = BarView("ETH/USDT", 0, 0, 3600 * NS_PER_S, 100.0, 100.0, 95.0, 99.0, 50.0, None, None)
    terms = SlippageModel(impact_coefficient=0.1, max_participation=0.1)
    assert fill_against_bar(OrderSide.BUY, 5.0, None, 0.001, bar, terms).price == 100.0

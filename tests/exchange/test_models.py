"""The pure pieces: spread/book model, fill rules, resampling, fault schedule, SQLite round trip, the
capture's book rebuilding and minute bars."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from crypto_pipeline.exchange.bars import NS_PER_S, SymbolBars, resample
from crypto_pipeline.exchange.book import BarView, SpreadModel
from crypto_pipeline.exchange.capture import CaptureFormatError, read_lines
from crypto_pipeline.exchange.config import FaultConfig
from crypto_pipeline.exchange.depth import BookState, CapturedBook, DepthDiff, DepthSnapshot, synchronize
from crypto_pipeline.exchange.faults import RestFaults
from crypto_pipeline.exchange.matching import fill_against_bar, fill_against_quote
from crypto_pipeline.exchange.minute_bars import CapturedTrade, minute_bar_versions, next_half_minute_mark
from crypto_pipeline.exchange.records import AccountRecord, OrderRecord, PositionRecord
from crypto_pipeline.exchange.store import ExchangeStore
from crypto_pipeline.trading import Liquidity, OrderSide
from crypto_pipeline.trading.rules import SlippageModel, add_qty, floor_qty

BAR = BarView("BTC/USDT", 0, 0, 300 * NS_PER_S, 100.0, 102.0, 98.0, 101.0, 50.0, None, None)
TERMS = SlippageModel(impact_coefficient=0.1, max_participation=0.1)
BUY, SELL = OrderSide.BUY, OrderSide.SELL


def test_spread_is_a_share_of_the_bar_range_with_a_floor() -> None:
    model = SpreadModel(min_spread_bps=1.0, spread_range_fraction=0.05, levels=3)
    assert model.spread_fraction(BAR) == pytest.approx(0.05 * 4 / 101)
    quiet = BarView("X", 0, 0, 1, 10, 10, 10, 10, 5, None, None)
    assert model.spread_fraction(quiet) == pytest.approx(1e-4)
    book = model.book(BAR)
    assert [level.size for level in book.bids] == pytest.approx([0.25, 0.5, 0.75])
    assert book.bids[0].price < BAR.close < book.asks[0].price


def test_impact_grows_with_size_and_fills_are_capped_by_participation() -> None:
    quote = SpreadModel(1.0, 0.05, 3).quote(BAR)
    small = fill_against_quote(BUY, 0.1, None, quote, BAR, TERMS)
    large = fill_against_quote(BUY, 4.0, None, quote, BAR, TERMS)
    capped = fill_against_quote(BUY, 100.0, None, quote, BAR, TERMS)
    assert small.price < large.price and small.price > quote.ask_price
    assert capped.qty == 5.0  # 10% of 50
    assert fill_against_quote(BUY, 1.0, quote.ask_price * 0.99, quote, BAR, TERMS) is None


def test_resting_limits_trade_at_their_price_only_when_the_bar_trades_through() -> None:
    assert fill_against_bar(BUY, 1.0, 98.5, 0.0, BAR, TERMS).price == 98.5
    assert fill_against_bar(BUY, 1.0, 97.0, 0.0, BAR, TERMS) is None
    assert fill_against_bar(SELL, 1.0, 101.5, 0.0, BAR, TERMS).liquidity == Liquidity.MAKER
    gap = fill_against_bar(BUY, 1.0, 150.0, 0.0, BAR, TERMS)  # opens below the limit: taker at the open
    assert gap.liquidity == Liquidity.TAKER and 100.0 < gap.price < 150.0


def test_quantities_round_down_to_nine_decimals_exactly() -> None:
    assert floor_qty(0.1234567899) == 0.123456789
    assert add_qty(33976.153, 16988.077) == 50964.23


def test_resampling_aggregates_ohlcv_per_epoch_aligned_bucket() -> None:
    hour = 3600 * NS_PER_S
    bars = SymbolBars(
        hour,
        np.arange(4) * hour,
        np.array([1.0, 2, 3, 4]),
        np.array([5.0, 6, 7, 8]),
        np.array([0.5, 0.4, 0.3, 0.2]),
        np.array([1.5, 2.5, 3.5, 4.5]),
        np.ones(4),
        None,
        None,
    )
    two = resample(bars, 2 * hour)
    assert two.ts.tolist() == [0, 2 * hour]
    assert two.open.tolist() == [1, 3] and two.high.tolist() == [6, 8] and two.low.tolist() == [0.4, 0.2]
    assert two.close.tolist() == [2.5, 4.5] and two.volume.tolist() == [2, 2]


def test_rest_faults_hit_exactly_the_configured_share_of_calls() -> None:
    faults = RestFaults(FaultConfig(rest_error_rate=0.25, rest_error_codes=[429, 500]))
    answers = [faults.next_error() for _ in range(8)]
    assert [a[0] if a else None for a in answers] == [None, None, None, 429, None, None, None, 500]
    with pytest.raises(ValueError):
        FaultConfig(rest_error_codes=[404])


def test_the_store_round_trips_every_record(tmp_path) -> None:
    store = ExchangeStore(tmp_path / "x.sqlite")
    order = OrderRecord(
        "o1",
        "c1",
        "BTC/USDT",
        "a1",
        "buy",
        "limit",
        "gtc",
        1.0,
        None,
        10.0,
        None,
        "new",
        1,
        2,
        stop_triggered=True,
        working_qty=1.0,
    )
    store.save(
        account=AccountRecord("acc", "PA1", 5.0, 0),
        orders=[order],
        positions=[PositionRecord("BTC/USDT", "a1", 2.0, 20.0)],
    )
    store.close()
    again = ExchangeStore(tmp_path / "x.sqlite")
    assert again.load_orders() == [order] and again.load_account().cash == 5.0
    assert again.load_positions()[0].avg_entry_price == 10.0
    again.close()
    assert ExchangeStore(tmp_path / "x.sqlite", reset=True).load_account() is None


def test_a_book_is_the_snapshot_plus_the_diffs_after_it_and_is_lost_at_a_gap() -> None:
    steps = synchronize(
        [
            DepthDiff(1, 1, 5, 9, ((100.0, 9.0),), ()),  # already inside the snapshot: dropped
            DepthDiff(2, 2, 9, 12, ((100.0, 2.0),), ((101.0, 0.0),)),  # straddles it: applied
            DepthSnapshot(3, 10, ((100.0, 1.0), (99.0, 1.0)), ((101.0, 1.0), (102.0, 1.0))),
            DepthDiff(4, 4, 13, 14, ((99.0, 0.0),), ((101.5, 3.0),)),
            DepthDiff(5, 5, 16, 17, ((98.0, 1.0),), ()),  # update 15 never came: the book is unknown
        ]
    )
    assert [step.kind for step in steps] == ["full", "diff", "lost"]
    book = CapturedBook(steps)
    assert book.at(2) is None  # before the snapshot nothing is shown, not even the diffs' levels
    assert book.at(3) == BookState(2, ((100.0, 2.0), (99.0, 1.0)), ((102.0, 1.0),))
    assert book.at(4) == BookState(4, ((100.0, 2.0),), ((101.5, 3.0), (102.0, 1.0)))
    assert book.at(5) is None and book.at(10**9) is None


def test_a_book_at_any_instant_equals_applying_every_diff_in_turn() -> None:
    # more diffs than CHECKPOINT_EVERY, so most answers start from a stored copy
    diffs = [
        DepthDiff(10 + i, 10 + i, 11 + i, 11 + i, ((90.0 + i % 7, float(i % 5)),), ()) for i in range(450)
    ]
    book = CapturedBook(synchronize([DepthSnapshot(5, 10, ((80.0, 1.0),), ((120.0, 1.0),)), *diffs]))
    naive = {80.0: 1.0}
    for diff in diffs:
        price, size = diff.bids[0]
        naive.pop(price, None) if size == 0 else naive.__setitem__(price, size)
        state = book.at(diff.at_ns)
        assert state is not None and state.bids == tuple(sorted(naive.items(), reverse=True))


def test_a_late_trade_updates_its_minute_bar_at_the_next_half_minute_mark() -> None:
    s = NS_PER_S
    trades = [
        CapturedTrade(10 * s, 10 * s, 1, 100.0, 1.0, "B"),
        CapturedTrade(64 * s, 59 * s, 2, 103.0, 2.0, "B"),  # late: after the bar at 60 s, before 90 s
        CapturedTrade(70 * s, 70 * s, 4, 102.0, 1.0, "S"),
        CapturedTrade(95 * s, 58 * s, 3, 99.0, 1.0, "S"),  # later still: after 90 s, so at 150 s
        CapturedTrade(185 * s, 185 * s, 5, 1.0, 1.0, "S"),  # its minute is not wholly captured
    ]
    versions = minute_bar_versions("X", trades, covered_from_ns=0, covered_until_ns=200 * s)
    assert [(v.at_ns // s, v.kind, v.bar.open_ns // s) for v in versions] == [
        (60, "b", 0),
        (90, "u", 0),
        (120, "b", 60),
        (150, "u", 0),
    ]
    first, corrected, final = versions[0].bar, versions[1].bar, versions[3].bar
    assert (first.close, first.volume, first.trade_count) == (100.0, 1.0, 1)
    assert (corrected.close, corrected.volume, corrected.vwap) == (103.0, 3.0, pytest.approx(102.0))
    assert (final.open, final.low, final.close, final.volume) == (100.0, 99.0, 103.0, 4.0)
    assert next_half_minute_mark(90 * s) == 90 * s and next_half_minute_mark(91 * s) == 150 * s


def test_a_malformed_capture_line_is_one_error_naming_the_file_and_line(tmp_path) -> None:
    path = tmp_path / "btcusdt_20240808.gz"
    with gzip.open(path, "wt") as handle:
        handle.write('1723161253937085768 {"stream": "btcusdt@trade", "data": {}}\nnot-a-time {}\n')
    with pytest.raises(CaptureFormatError, match=r"btcusdt_20240808.gz line 2: expected"):
        read_lines(path)

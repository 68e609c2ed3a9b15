"""The pure pieces: spread/book model, fill rules, resampling, fault schedule, SQLite round trip."""

from __future__ import annotations

import numpy as np
import pytest

from crypto_pipeline.exchange.bars import NS_PER_S, SymbolBars, resample
from crypto_pipeline.exchange.book import BarView, SpreadModel
from crypto_pipeline.exchange.config import FaultConfig
from crypto_pipeline.exchange.faults import RestFaults
from crypto_pipeline.exchange.matching import (
    FillTerms,
    add_qty,
    fill_against_bar,
    fill_against_quote,
    floor_qty,
)
from crypto_pipeline.exchange.records import AccountRecord, OrderRecord, PositionRecord
from crypto_pipeline.exchange.store import ExchangeStore

BAR = BarView("BTC/USDT", 0, 0, 300 * NS_PER_S, 100.0, 102.0, 98.0, 101.0, 50.0, None, None)
TERMS = FillTerms(impact_coefficient=0.1, max_participation=0.1, maker_fee_bps=15, taker_fee_bps=25)


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
    small = fill_against_quote("buy", 0.1, None, quote, BAR, TERMS)
    large = fill_against_quote("buy", 4.0, None, quote, BAR, TERMS)
    capped = fill_against_quote("buy", 100.0, None, quote, BAR, TERMS)
    assert small.price < large.price and small.price > quote.ask_price
    assert capped.qty == 5.0  # 10% of 50
    assert fill_against_quote("buy", 1.0, quote.ask_price * 0.99, quote, BAR, TERMS) is None


def test_resting_limits_trade_at_their_price_only_when_the_bar_trades_through() -> None:
    assert fill_against_bar("buy", 1.0, 98.5, 0.0, BAR, TERMS).price == 98.5
    assert fill_against_bar("buy", 1.0, 97.0, 0.0, BAR, TERMS) is None
    assert fill_against_bar("sell", 1.0, 101.5, 0.0, BAR, TERMS).liquidity == "maker"
    gap = fill_against_bar("buy", 1.0, 150.0, 0.0, BAR, TERMS)  # opens below the limit: taker at the open
    assert gap.liquidity == "taker" and 100.0 < gap.price < 150.0


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

"""Exact matching, fee and spread-model rules, proved through alpaca-py at a clock that stands still.

A stepped clock that nobody steps does not move, so every expected price can be
computed from the recorded bar the exchange must be using: the last 5m bar closed at FROZEN_AT.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from alpaca.common.exceptions import APIError
from alpaca.data.historical.crypto import CryptoHistoricalDataClient
from alpaca.data.requests import (
    CryptoBarsRequest,
    CryptoLatestBarRequest,
    CryptoLatestOrderbookRequest,
    CryptoLatestQuoteRequest,
    CryptoLatestTradeRequest,
)
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, TimeInForce
from alpaca.trading.requests import (
    ClosePositionRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    StopOrderRequest,
)

from crypto_pipeline.exchange import ExchangeServer

from .conftest import KEY, SECRET, half_spread, make_config

FROZEN_AT = datetime(2024, 8, 5, 12, 0, tzinfo=UTC)
LAST_CLOSED = FROZEN_AT - timedelta(minutes=5)  # the 11:55 bar closed at 12:00 exactly
MAKER_BPS, TAKER_BPS = 10.0, 30.0  # not Alpaca's defaults: the configured rates must be the ones charged
BUY, SELL, GTC, IOC = OrderSide.BUY, OrderSide.SELL, TimeInForce.GTC, TimeInForce.IOC


@pytest.fixture(scope="module")
def frozen(capture_days_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExchangeServer]:
    config = make_config(
        tmp_path_factory.mktemp("frozen-rules") / "exchange.sqlite",
        data_dir=capture_days_data,
        capture_dir=None,
        start=FROZEN_AT.isoformat(),
        speed=0.0,
        stepped=True,
        initial_cash=10_000_000.0,  # room for orders larger than a bar's participation cap
        maker_fee_bps=MAKER_BPS,
        taker_fee_bps=TAKER_BPS,
    )
    with ExchangeServer(config) as server:
        yield server


@pytest.fixture(scope="module")
def trading(frozen: ExchangeServer) -> TradingClient:
    return TradingClient(KEY, SECRET, paper=True, url_override=frozen.base_url)


@pytest.fixture(scope="module")
def data_client(frozen: ExchangeServer) -> CryptoHistoricalDataClient:
    return CryptoHistoricalDataClient(KEY, SECRET, url_override=frozen.base_url)


def recorded_bar(data_dir: Path, symbol: str, open_at: datetime) -> dict[str, float]:
    rows = pl.read_parquet(data_dir / "bars_5m.parquet").filter(
        pl.col("symbol") == symbol, pl.col("timestamp") == open_at
    )
    assert rows.height == 1
    return rows.row(0, named=True)


def cash(trading: TradingClient) -> float:
    return float(trading.get_account().cash)


def rejection(call) -> APIError:  # noqa: ANN001
    with pytest.raises(APIError) as error:
        call()
    return error.value


def test_the_clock_stands_still_and_no_bar_after_it_is_served(
    trading: TradingClient, data_client: CryptoHistoricalDataClient
) -> None:
    assert trading.get_clock().timestamp == FROZEN_AT
    bars = data_client.get_crypto_bars(
        CryptoBarsRequest(
            symbol_or_symbols="BTC/USDT",
            timeframe=TimeFrame(5, TimeFrameUnit.Minute),
            start=FROZEN_AT - timedelta(hours=1),
            end=FROZEN_AT + timedelta(days=3),
        )
    ).data["BTC/USDT"]
    # 11:00 ... 11:55: the 12:00 bar is still open at 12:00, and nothing later exists yet
    assert [b.timestamp for b in bars] == [FROZEN_AT - timedelta(minutes=5 * k) for k in range(12, 0, -1)]


def test_latest_quote_book_and_trade_are_the_documented_spread_model_of_the_last_closed_bar(
    data_client: CryptoHistoricalDataClient, capture_days_data: Path
) -> None:
    bar = recorded_bar(capture_days_data, "BTC/USDT", LAST_CLOSED)
    half, close, volume = half_spread(bar), bar["close"], bar["volume"]
    request = {"symbol_or_symbols": "BTC/USDT"}

    latest = data_client.get_crypto_latest_bar(CryptoLatestBarRequest(**request))["BTC/USDT"]
    assert latest.timestamp == LAST_CLOSED
    assert (latest.open, latest.high, latest.low, latest.close, latest.volume) == (
        bar["open"],
        bar["high"],
        bar["low"],
        close,
        volume,
    )

    quote = data_client.get_crypto_latest_quote(CryptoLatestQuoteRequest(**request))["BTC/USDT"]
    assert quote.timestamp == FROZEN_AT  # stamped when the bar became known, never earlier
    assert quote.bid_price == pytest.approx(close * (1 - half), rel=1e-12)
    assert quote.ask_price == pytest.approx(close * (1 + half), rel=1e-12)
    assert quote.bid_size == quote.ask_size == pytest.approx(0.005 * volume, rel=1e-12)

    book = data_client.get_crypto_latest_orderbook(CryptoLatestOrderbookRequest(**request))["BTC/USDT"]
    sizes = [(i + 1) * 0.005 * volume for i in range(10)]
    assert [level.size for level in book.bids] == [level.size for level in book.asks] == pytest.approx(sizes)
    assert [level.price for level in book.bids] == pytest.approx(
        [close * (1 - half * (i + 1)) for i in range(10)], rel=1e-12
    )
    assert [level.price for level in book.asks] == pytest.approx(
        [close * (1 + half * (i + 1)) for i in range(10)], rel=1e-12
    )

    trade = data_client.get_crypto_latest_trade(CryptoLatestTradeRequest(**request))["BTC/USDT"]
    assert (trade.price, trade.size, trade.timestamp) == (close, volume, FROZEN_AT)


def test_a_market_buy_pays_linear_impact_over_the_ask_and_the_configured_taker_fee(
    trading: TradingClient, capture_days_data: Path
) -> None:
    bar = recorded_bar(capture_days_data, "BTC/USDT", LAST_CLOSED)
    ask = bar["close"] * (1 + half_spread(bar))
    prices = []
    for qty in (0.01, 20.0):  # 20 BTC is about 7% of the bar's volume, under the 10% cap
        before = cash(trading)
        order = trading.submit_order(
            MarketOrderRequest(symbol="BTC/USDT", qty=qty, side=BUY, time_in_force=GTC)
        )
        assert order.status == OrderStatus.FILLED and float(order.filled_qty) == qty
        price = float(order.filled_avg_price)
        assert price == pytest.approx(ask * (1 + 0.1 * qty / bar["volume"]), rel=1e-9)
        assert before - cash(trading) == pytest.approx(qty * price * (1 + TAKER_BPS / 10_000), abs=0.011)
        prices.append(price)
    assert prices[1] > prices[0]


def test_an_order_beyond_the_participation_cap_fills_the_cap_then_ioc_cancels_and_gtc_keeps_working(
    trading: TradingClient, capture_days_data: Path
) -> None:
    bar = recorded_bar(capture_days_data, "BTC/USDT", LAST_CLOSED)
    cap = int(bar["volume"] * 0.1 * 10**9) / 10**9  # 10% of the bar, rounded down to 9 decimals
    qty = round(bar["volume"] * 0.15, 4)
    ask = bar["close"] * (1 + half_spread(bar))

    ioc = trading.submit_order(MarketOrderRequest(symbol="BTC/USDT", qty=qty, side=BUY, time_in_force=IOC))
    assert ioc.status == OrderStatus.CANCELED and float(ioc.filled_qty) == pytest.approx(cap, abs=1e-9)
    assert float(ioc.filled_avg_price) == pytest.approx(ask * 1.01, rel=1e-9)  # impact at 10% of volume

    gtc = trading.submit_order(MarketOrderRequest(symbol="BTC/USDT", qty=qty, side=BUY, time_in_force=GTC))
    try:
        assert gtc.status == OrderStatus.PARTIALLY_FILLED
        assert float(gtc.filled_qty) == pytest.approx(cap, abs=1e-9)
        assert trading.get_order_by_id(gtc.id).status == OrderStatus.PARTIALLY_FILLED  # still working
    finally:
        trading.cancel_order_by_id(gtc.id)


def test_selling_more_than_held_is_refused_counting_open_sell_orders(trading: TradingClient) -> None:
    trading.submit_order(MarketOrderRequest(symbol="ETH/USDT", qty=0.5, side=BUY, time_in_force=GTC))
    held = float(trading.get_open_position("ETH/USDT").qty)
    too_much = rejection(
        lambda: trading.submit_order(
            MarketOrderRequest(symbol="ETH/USDT", qty=round(held + 0.1, 9), side=SELL, time_in_force=GTC)
        )
    )
    assert too_much.status_code == 403 and too_much.message.startswith("insufficient balance for ETH")
    assert f"available: {held:g})" in too_much.message

    resting = trading.submit_order(
        LimitOrderRequest(symbol="ETH/USDT", qty=held, side=SELL, time_in_force=GTC, limit_price=9_999.0)
    )
    assert resting.status == OrderStatus.NEW
    committed = rejection(
        lambda: trading.submit_order(
            MarketOrderRequest(symbol="ETH/USDT", qty=0.01, side=SELL, time_in_force=GTC)
        )
    )
    assert committed.status_code == 403 and "available: 0)" in committed.message
    trading.cancel_order_by_id(resting.id)
    freed = trading.submit_order(
        MarketOrderRequest(symbol="ETH/USDT", qty=0.01, side=SELL, time_in_force=GTC)
    )
    assert freed.status == OrderStatus.FILLED


def test_a_quantity_with_exactly_nine_decimals_is_accepted_and_filled_exactly(trading: TradingClient) -> None:
    def held() -> float:
        positions = {p.symbol: float(p.qty) for p in trading.get_all_positions()}
        return positions.get("ETHUSDT", 0.0)

    before = held()
    order = trading.submit_order(
        MarketOrderRequest(symbol="ETH/USDT", qty=0.123456789, side=BUY, time_in_force=GTC)
    )
    assert order.status == OrderStatus.FILLED and float(order.filled_qty) == 0.123456789
    assert round(held() - before, 9) == 0.123456789


def test_a_quantity_above_the_minimum_size_but_worth_under_a_dollar_is_refused(
    trading: TradingClient, capture_days_data: Path
) -> None:
    minimum = float(trading.get_asset("ETH/USDT").min_order_size)
    close = recorded_bar(capture_days_data, "ETH/USDT", LAST_CLOSED)["close"]
    assert minimum * close < 1, "the minimum size is worth a dollar or more here: pick another asset"
    error = rejection(
        lambda: trading.submit_order(
            MarketOrderRequest(symbol="ETH/USDT", qty=minimum, side=BUY, time_in_force=GTC)
        )
    )
    assert error.status_code == 403 and error.message == "cost basis must be >= minimal amount of order 1"


def test_order_types_and_times_in_force_that_crypto_lacks_are_refused(trading: TradingClient) -> None:
    stop = rejection(
        lambda: trading.submit_order(
            StopOrderRequest(symbol="ETH/USDT", qty=0.01, side=BUY, time_in_force=GTC, stop_price=9_000.0)
        )
    )
    assert stop.status_code == 422 and stop.message == "invalid order type for crypto order: stop"
    fok = rejection(
        lambda: trading.submit_order(
            MarketOrderRequest(symbol="ETH/USDT", qty=0.01, side=BUY, time_in_force=TimeInForce.FOK)
        )
    )
    assert fok.status_code == 422 and fok.message == "invalid crypto time_in_force: fok"


def test_closing_a_position_with_a_malformed_percentage_is_a_422_that_changes_nothing(
    trading: TradingClient,
) -> None:
    trading.submit_order(MarketOrderRequest(symbol="ETH/USDT", qty=0.05, side=BUY, time_in_force=GTC))
    held = trading.get_open_position("ETH/USDT").qty
    error = rejection(lambda: trading.close_position("ETH/USDT", ClosePositionRequest(percentage="half")))
    assert error.status_code == 422 and "percentage" in error.message
    assert trading.get_open_position("ETH/USDT").qty == held


def test_market_buys_reserve_the_largest_impact_so_cash_never_goes_negative(
    capture_days_data: Path, tmp_path: Path
) -> None:
    config = make_config(
        tmp_path / "exchange.sqlite",
        data_dir=capture_days_data,
        capture_dir=None,
        start=FROZEN_AT.isoformat(),
        speed=0.0,
        stepped=True,
        initial_cash=1_000.0,
        taker_fee_bps=TAKER_BPS,
    )
    with ExchangeServer(config) as server:
        trading = TradingClient(KEY, SECRET, paper=True, url_override=server.base_url)
        bar = recorded_bar(capture_days_data, "BTC/USDT", LAST_CLOSED)
        ask = bar["close"] * (1 + half_spread(bar))
        fee = 1 + TAKER_BPS / 10_000
        worst_impact = 1 + config.impact_coefficient * config.max_participation
        all_in = round(1_000.0 / (ask * fee), 6)  # affordable at the ask alone, not at the worst impact
        refused = rejection(
            lambda: trading.submit_order(
                MarketOrderRequest(symbol="BTC/USDT", qty=all_in, side=BUY, time_in_force=GTC)
            )
        )
        assert refused.status_code == 403 and "insufficient balance" in str(refused)
        covered = round(1_000.0 / (ask * worst_impact * fee) * 0.999, 6)
        order = trading.submit_order(
            MarketOrderRequest(symbol="BTC/USDT", qty=covered, side=BUY, time_in_force=GTC)
        )
        assert order.status == OrderStatus.FILLED and float(order.filled_qty) == covered
        assert 0 <= cash(trading) < 1_000.0

"""The crypto data REST API, driven through alpaca-py's CryptoHistoricalDataClient."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

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
    CryptoSnapshotRequest,
)
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from alpaca.trading.client import TradingClient

from crypto_pipeline.exchange import ExchangeServer

from .conftest import DATA_2024, KEY, SECRET


def recorded(timeframe: str, symbol: str, start: datetime, end: datetime) -> pl.DataFrame:
    return (
        pl.scan_parquet(DATA_2024 / f"bars_{timeframe}.parquet")
        .filter(pl.col("symbol") == symbol, pl.col("timestamp") >= start, pl.col("timestamp") <= end)
        .sort("timestamp")
        .collect()
    )


def test_bars_paginate_over_several_pages_and_match_the_recorded_data(
    data_client: CryptoHistoricalDataClient, exchange: ExchangeServer
) -> None:
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 5, 1, tzinfo=UTC)
    before = exchange.venue.rest_faults.calls
    bars = data_client.get_crypto_bars(
        CryptoBarsRequest(
            symbol_or_symbols=["BTC/USDT", "ETH/USDT"],
            timeframe=TimeFrame(5, TimeFrameUnit.Minute),
            start=start,
            end=end,
        )
    ).data
    pages = exchange.venue.rest_faults.calls - before
    for symbol in ("BTC/USDT", "ETH/USDT"):
        expected = recorded("5m", symbol, start, end)
        got = bars[symbol]
        assert len(got) == expected.height > 30_000
        assert [b.timestamp for b in got[::997]] == expected["timestamp"].to_list()[::997]
        assert [b.close for b in got[-50:]] == expected["close"].to_list()[-50:]
    assert pages >= 7  # ~70k bars at 10,000 a page


def test_bars_honour_limit_and_descending_sort(data_client: CryptoHistoricalDataClient) -> None:
    start = datetime(2024, 3, 1, tzinfo=UTC)
    request = CryptoBarsRequest(symbol_or_symbols="SOL/USDT", timeframe=TimeFrame.Hour, start=start, limit=25)
    bars = data_client.get_crypto_bars(request).data["SOL/USDT"]
    assert len(bars) == 25 and bars[0].timestamp == start
    request = CryptoBarsRequest(
        symbol_or_symbols="SOL/USDT",
        timeframe=TimeFrame.Hour,
        start=start,
        end=start + timedelta(hours=9),
        sort="desc",
    )
    bars = data_client.get_crypto_bars(request).data["SOL/USDT"]
    assert [b.timestamp for b in bars] == [start + timedelta(hours=h) for h in range(9, -1, -1)]


def test_bars_never_include_a_bar_that_has_not_closed_at_the_replay_clock(
    data_client: CryptoHistoricalDataClient, trading: TradingClient
) -> None:
    request = CryptoBarsRequest(
        symbol_or_symbols="BTC/USDT",
        timeframe=TimeFrame(5, TimeFrameUnit.Minute),
        start=datetime(2024, 5, 31, tzinfo=UTC),
        end=datetime(2024, 9, 7, tzinfo=UTC),
    )
    before = trading.get_clock().timestamp
    bars = data_client.get_crypto_bars(request).data["BTC/USDT"]
    after = trading.get_clock().timestamp
    assert bars[-1].timestamp + timedelta(minutes=5) <= after
    # and the latest visible bar is the one that closed last before the call
    assert bars[-1].timestamp + timedelta(minutes=10) > before


def test_a_clock_started_at_the_end_of_the_data_serves_all_history(start_exchange) -> None:
    server = start_exchange(start="2024-09-08", speed=1.0)
    client = CryptoHistoricalDataClient(KEY, SECRET, url_override=server.base_url)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    bars = client.get_crypto_bars(
        CryptoBarsRequest(symbol_or_symbols=["AAVE/USDT", "BTC/USDT"], timeframe=TimeFrame.Hour, start=start)
    ).data
    for symbol in ("AAVE/USDT", "BTC/USDT"):
        assert len(bars[symbol]) == recorded("1h", symbol, start, datetime(2024, 9, 8, tzinfo=UTC)).height


def test_timeframes_missing_from_the_files_are_resampled_from_finer_bars(
    data_client: CryptoHistoricalDataClient,
) -> None:
    start, end = datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 2, 3, tzinfo=UTC)
    bars = data_client.get_crypto_bars(
        CryptoBarsRequest(
            symbol_or_symbols="ETH/USDT", timeframe=TimeFrame(2, TimeFrameUnit.Hour), start=start, end=end
        )
    ).data["ETH/USDT"]
    expected = (
        recorded("1h", "ETH/USDT", start, end + timedelta(hours=1))
        .group_by_dynamic("timestamp", every="2h")
        .agg(
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
            pl.col("volume").sum(),
        )
        .filter(pl.col("timestamp") <= end)
    )
    assert len(bars) == expected.height == 25
    assert [b.high for b in bars] == expected["high"].to_list()
    assert [b.volume for b in bars] == pytest.approx(expected["volume"].to_list())


def test_latest_quote_trade_bar_and_orderbook_follow_the_spread_model(
    data_client: CryptoHistoricalDataClient, trading: TradingClient
) -> None:
    symbols = ["BTC/USDT", "AAVE/USDT"]
    # The clock runs at 1800x: a bar may complete between two calls. A bar fetched between two equal
    # quotes is the bar those quotes were derived from.
    for _ in range(5):
        quotes = data_client.get_crypto_latest_quote(CryptoLatestQuoteRequest(symbol_or_symbols=symbols))
        bars = data_client.get_crypto_latest_bar(CryptoLatestBarRequest(symbol_or_symbols=symbols))
        again = data_client.get_crypto_latest_quote(CryptoLatestQuoteRequest(symbol_or_symbols=symbols))
        if all(quotes[s].timestamp == again[s].timestamp for s in symbols):
            break
    trades = data_client.get_crypto_latest_trade(CryptoLatestTradeRequest(symbol_or_symbols=symbols))
    books = data_client.get_crypto_latest_orderbook(CryptoLatestOrderbookRequest(symbol_or_symbols=symbols))
    now = trading.get_clock().timestamp
    for symbol in symbols:
        bar, quote, book = bars[symbol], quotes[symbol], books[symbol]
        assert bar.timestamp < now
        assert quote.bid_price < bar.close < quote.ask_price
        assert (quote.ask_price - quote.bid_price) / bar.close >= 1e-4 * 0.999  # at least 1 bp
        assert trades[symbol].price > 0 and trades[symbol].size > 0
        assert len(book.bids) == len(book.asks) == 10
        assert [level.price for level in book.bids] == sorted(
            (level.price for level in book.bids), reverse=True
        )
        assert [level.price for level in book.asks] == sorted(level.price for level in book.asks)
        assert book.bids[0].price < book.asks[0].price


def test_snapshots_carry_latest_values_and_daily_bars(data_client: CryptoHistoricalDataClient) -> None:
    snapshot = data_client.get_crypto_snapshot(CryptoSnapshotRequest(symbol_or_symbols=["ETH/USDT"]))[
        "ETH/USDT"
    ]
    assert snapshot.latest_trade is not None and snapshot.latest_quote is not None
    assert snapshot.minute_bar is not None and snapshot.previous_daily_bar is not None
    assert snapshot.previous_daily_bar.timestamp.hour == 0
    assert snapshot.latest_quote.bid_price < snapshot.latest_quote.ask_price


def test_data_calls_with_missing_or_wrong_keys_are_refused(exchange: ExchangeServer) -> None:
    request = CryptoLatestBarRequest(symbol_or_symbols="BTC/USDT")
    with pytest.raises(APIError) as missing:
        CryptoHistoricalDataClient(url_override=exchange.base_url).get_crypto_latest_bar(request)
    assert missing.value.status_code == 401
    with pytest.raises(APIError) as wrong:
        CryptoHistoricalDataClient(
            KEY, "not-the-secret", url_override=exchange.base_url
        ).get_crypto_latest_bar(request)
    assert wrong.value.status_code == 403 and wrong.value.code == 40310000


def test_an_invalid_timeframe_is_a_422_with_alpacas_error_body(
    data_client: CryptoHistoricalDataClient,
) -> None:
    request = CryptoBarsRequest(symbol_or_symbols="BTC/USDT", timeframe=TimeFrame(1, TimeFrameUnit.Week))
    with pytest.raises(APIError) as error:
        data_client.get_crypto_bars(request)
    assert error.value.status_code == 422 and "not served" in error.value.message


def test_descending_bars_with_a_limit_above_one_page_come_newest_first_over_two_pages(
    data_client: CryptoHistoricalDataClient, exchange: ExchangeServer
) -> None:
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)
    before = exchange.venue.rest_faults.calls
    bars = data_client.get_crypto_bars(
        CryptoBarsRequest(
            symbol_or_symbols="BTC/USDT",
            timeframe=TimeFrame(5, TimeFrameUnit.Minute),
            start=start,
            end=end,
            limit=15_000,  # the client asks 10,000 then the remaining 5,000
            sort="desc",
        )
    ).data["BTC/USDT"]
    assert exchange.venue.rest_faults.calls - before == 2
    expected = recorded("5m", "BTC/USDT", start, end).reverse().head(15_000)
    assert [b.timestamp for b in bars] == expected["timestamp"].to_list()
    assert [b.close for b in bars] == expected["close"].to_list()


@pytest.mark.slow  # waits on the replay clock running in real time
def test_the_replay_clock_runs_at_the_configured_speed(
    trading: TradingClient, exchange: ExchangeServer
) -> None:
    outer_start = time.monotonic()
    first = trading.get_clock().timestamp
    inner_start = time.monotonic()
    time.sleep(0.3)
    inner_end = time.monotonic()
    second = trading.get_clock().timestamp
    outer_end = time.monotonic()
    # each reading happened inside its call: the market time between them lies between speed x the
    # wall time between the calls and speed x the wall time spanning both
    speed = exchange.config.speed
    elapsed = (second - first).total_seconds()
    assert speed * (inner_end - inner_start) <= elapsed <= speed * (outer_end - outer_start)


def test_a_directory_of_alpaca_shaped_csvs_serves_its_trade_counts_and_vwaps(start_exchange, recorded) -> None:
    directory = recorded("alpaca-btcusd-2021")
    server = start_exchange(data_dir=directory, capture_dir=None, start="2021-01-05", speed=0.0)
    assert [a.symbol for a in TradingClient(KEY, SECRET, url_override=server.base_url).get_all_assets()] == [
        "BTC/USD"
    ]
    client = CryptoHistoricalDataClient(KEY, SECRET, url_override=server.base_url)
    start, end = datetime(2021, 1, 1, 6, tzinfo=UTC), datetime(2021, 1, 2, 6, tzinfo=UTC)
    for timeframe, name in ((TimeFrame.Minute, "MINUTE"), (TimeFrame.Hour, "HOUR")):
        expected = (
            pl.read_csv(directory / f"BTC-USD_{name}.csv")
            .with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC"))
            .filter(pl.col("timestamp").is_between(start, end))
        )
        bars = client.get_crypto_bars(
            CryptoBarsRequest(symbol_or_symbols="BTC/USD", timeframe=timeframe, start=start, end=end)
        ).data["BTC/USD"]
        assert len(bars) == expected.height > 20
        assert [(b.timestamp, b.close, b.trade_count, b.vwap) for b in bars] == list(
            zip(
                expected["timestamp"],
                expected["close"],
                expected["trade_count"],
                expected["vwap"],
                strict=True,
            )
        )

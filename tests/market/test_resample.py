"""Resampling equals the venues' own coarser bars, and never emits a period that is not over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from crypto_pipeline.market.resample import RESAMPLED_COLUMNS, resample_bars
from crypto_pipeline.market.schema import BAR_SCHEMA, conform_bars
from crypto_pipeline.market.sources import RecordedSource

# Large and tiny prices (PEPE trades around 1e-6) over April 2024.
SYMBOLS = ["BTC/USDT", "ETH/USDT", "PEPE/USDT"]
START, END = datetime(2024, 4, 1, tzinfo=UTC), datetime(2024, 5, 1, tzinfo=UTC)


def _recorded(recorded, tf: str, symbols: list[str] = SYMBOLS) -> pl.DataFrame:
    frame = (
        pl.scan_parquet(recorded("binance-spot-2024", f"bars_{tf}.parquet"))
        .filter(
            pl.col("symbol").is_in(symbols) & (pl.col("timestamp") >= START) & (pl.col("timestamp") < END)
        )
        .collect()
    )
    return conform_bars(frame)


@pytest.fixture(scope="module")
def five_minute(recorded) -> pl.DataFrame:
    return _recorded(recorded, "5m")


@pytest.mark.parametrize(("target", "per_bar"), [("1h", 12), ("4h", 48), ("1d", 288)])
def test_resampled_5m_bars_equal_binances_own_bars_where_every_5m_bar_exists(
    five_minute: pl.DataFrame, recorded, target: str, per_bar: int
) -> None:
    ours = resample_bars(five_minute, "5m", target)
    theirs = _recorded(recorded, target)
    joined = ours.join(theirs, on=["symbol", "timestamp"], suffix="_binance", how="inner")
    complete = joined.filter(pl.col("bar_count") == per_bar)
    # Every recorded bar of the month is reproduced, and nearly all from a full set of 5m bars.
    assert joined.height == theirs.height
    assert complete.height >= 0.99 * theirs.height
    for column in ("open", "high", "low", "close"):
        assert (complete[column] == complete[f"{column}_binance"]).all(), column
    volume_error = (
        (complete["volume"] - complete["volume_binance"]).abs() / complete["volume_binance"]
    ).max()
    assert volume_error < 1e-9  # the same sum, added in another order


def test_resampled_alpaca_minutes_equal_alpacas_hours_including_trade_count_and_vwap(recorded) -> None:
    source = RecordedSource(recorded("alpaca-btcusd-2021"))
    window = (datetime(2021, 1, 1, tzinfo=UTC), datetime(2021, 1, 5, tzinfo=UTC))
    minutes = source.fetch_bars(["BTC/USD"], "1m", *window)
    hours = source.fetch_bars(["BTC/USD"], "1h", *window)
    ours = resample_bars(minutes, "1m", "1h")
    joined = ours.join(hours, on=["symbol", "timestamp"], suffix="_alpaca")
    assert joined.height == ours.height >= 85
    for column in ("open", "high", "low", "close", "trade_count"):
        assert (joined[column] == joined[f"{column}_alpaca"]).all(), column
    for column in ("volume", "vwap"):
        relative = ((joined[column] - joined[f"{column}_alpaca"]).abs() / joined[f"{column}_alpaca"]).max()
        assert relative < 1e-9, column


def test_chained_resampling_equals_resampling_the_base_directly(five_minute: pl.DataFrame) -> None:
    direct = resample_bars(five_minute, "5m", "4h")
    via_1h = resample_bars(resample_bars(resample_bars(five_minute, "5m", "15m"), "15m", "1h"), "1h", "4h")
    assert via_1h.select("symbol", "timestamp", "open", "high", "low", "close", "bar_count").equals(
        direct.select("symbol", "timestamp", "open", "high", "low", "close", "bar_count")
    )
    assert ((via_1h["volume"] - direct["volume"]).abs() / direct["volume"]).max() < 1e-12


def test_a_period_that_is_not_over_is_never_emitted(five_minute: pl.DataFrame) -> None:
    btc = five_minute.filter(pl.col("symbol") == "BTC/USDT")
    cut = btc.filter(pl.col("timestamp") < datetime(2024, 4, 10, 13, 25, tzinfo=UTC))  # last bar 13:20
    hours = resample_bars(cut, "5m", "1h")
    days = resample_bars(cut, "5m", "1d")
    assert hours["timestamp"].max() == datetime(2024, 4, 10, 12, tzinfo=UTC)
    assert days["timestamp"].max() == datetime(2024, 4, 9, tzinfo=UTC)
    # No emitted bar closes after the close of the last source bar.
    last_close = cut["timestamp"].max() + timedelta(minutes=5)
    for frame, duration in ((hours, timedelta(hours=1)), (days, timedelta(days=1))):
        assert (frame["timestamp"] + duration <= last_close).all()


def test_a_period_known_to_be_over_is_emitted_even_with_missing_bars(five_minute: pl.DataFrame) -> None:
    btc = five_minute.filter(pl.col("symbol") == "BTC/USDT")
    cut = btc.filter(pl.col("timestamp") < datetime(2024, 4, 10, 13, 25, tzinfo=UTC))
    later = datetime(2024, 4, 10, 14, tzinfo=UTC)  # the source has moved past 14:00 (say, its next bar)
    hours = resample_bars(cut, "5m", "1h", complete_until={"BTC/USDT": later})
    last = hours.filter(pl.col("timestamp") == datetime(2024, 4, 10, 13, tzinfo=UTC))
    assert last["bar_count"].to_list() == [5]
    assert last["close"].to_list() == cut["close"].tail(1).to_list()


def test_a_source_without_trade_count_or_vwap_gives_nulls_not_zeros(five_minute: pl.DataFrame) -> None:
    hours = resample_bars(five_minute, "5m", "1h")
    assert hours["trade_count"].null_count() == hours.height
    assert hours["vwap"].null_count() == hours.height


@pytest.mark.parametrize(("source", "target"), [("1h", "5m"), ("1h", "1h")])
def test_resampling_to_a_finer_or_equal_timeframe_is_refused(source: str, target: str) -> None:
    with pytest.raises(ValueError, match="whole multiple"):
        resample_bars(pl.DataFrame(schema=BAR_SCHEMA), source, target)


def test_resampling_nothing_gives_an_empty_frame_with_the_bars_columns() -> None:
    out = resample_bars(pl.DataFrame(schema=BAR_SCHEMA), "5m", "1h")
    assert out.is_empty() and out.columns == list(RESAMPLED_COLUMNS)

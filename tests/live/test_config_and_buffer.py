"""The session's settings refuse what cannot work, and the bar buffer reports gaps and stays bounded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from crypto_pipeline.config import Settings
from crypto_pipeline.errors import UserInputError
from crypto_pipeline.execution import client_order_id
from crypto_pipeline.live.bars import BarBuffer
from crypto_pipeline.live.config import LiveConfig
from crypto_pipeline.live.venue import resolve_endpoints
from crypto_pipeline.market.timeframes import Timeframe

T0 = datetime(2024, 8, 5, tzinfo=UTC)


def bar(minutes: int, close: float = 100.0) -> dict:
    return {
        "timestamp": T0 + timedelta(minutes=minutes),
        "open": close,
        "high": close,
        "low": close,
        "close": close,
        "volume": 1.0,
    }


def test_a_decision_interval_that_is_no_multiple_of_the_timeframe_is_refused() -> None:
    with pytest.raises(ValidationError, match="whole multiple"):
        LiveConfig(timeframe="15m", decision_interval="5m")
    assert LiveConfig(symbols="BTC/USDT, ETH/USDT").symbols == ("BTC/USDT", "ETH/USDT")


def test_real_money_needs_the_explicit_setting() -> None:
    with pytest.raises(UserInputError, match="CRYPTO_PIPELINE_LIVE_TRADING_ENABLED"):
        resolve_endpoints("alpaca_live", Settings(live_trading_enabled=False))
    assert resolve_endpoints("alpaca_live", Settings(live_trading_enabled=True)).paper is False
    assert resolve_endpoints("alpaca_paper", Settings()).paper is True


def test_the_buffer_reports_the_gap_a_lost_bar_leaves_and_keeps_at_most_max_bars() -> None:
    buffer = BarBuffer(("BTC/USDT",), Timeframe.M5, max_bars=3)
    assert buffer.add_stream_bar("BTC/USDT", bar(0)) is None
    assert buffer.add_stream_bar("BTC/USDT", bar(5)) is None
    gap = buffer.add_stream_bar("BTC/USDT", bar(20))
    assert gap is not None and (gap.start, gap.end) == (
        T0 + timedelta(minutes=10),
        T0 + timedelta(minutes=20),
    )
    buffer.add_stream_bar("BTC/USDT", bar(25))
    assert buffer.count("BTC/USDT") == 3 and buffer.last_close("BTC/USDT") == T0 + timedelta(minutes=30)


def test_a_finer_stream_bar_marks_its_period_for_rest() -> None:
    buffer = BarBuffer(("BTC/USDT",), Timeframe.M5, max_bars=10)
    buffer.add_stream_bar("BTC/USDT", bar(0))
    buffer.add_stream_bar("BTC/USDT", bar(6, close=101))  # a minute bar inside 00:05-00:10
    assert [(g.start, g.end) for g in buffer.suspect_until(T0 + timedelta(minutes=10))] == [
        (T0 + timedelta(minutes=5), T0 + timedelta(minutes=10))
    ]
    assert buffer.suspect_until(T0 + timedelta(minutes=9)) == []


def test_minute_bars_complete_a_base_period_only_with_its_last_minute() -> None:
    """Alpaca streams 1m bars: the first minute of 00:05-00:10 must not make that period count as
    closed (the loop would decide at 00:10 four minutes early, on one minute of the bar)."""
    buffer = BarBuffer(("BTC/USDT",), Timeframe.M5, max_bars=10)
    buffer.add_stream_bar("BTC/USDT", bar(4))  # finer, its length not known yet
    assert buffer.last_close("BTC/USDT") == T0 + timedelta(minutes=4)
    buffer.add_stream_bar("BTC/USDT", bar(5))  # one minute later: the stream's bars are 1m
    assert buffer.last_close("BTC/USDT") == T0 + timedelta(minutes=6)
    for minute in (6, 7, 8):
        buffer.add_stream_bar("BTC/USDT", bar(minute))
    assert buffer.last_close("BTC/USDT") == T0 + timedelta(minutes=9)
    buffer.add_stream_bar("BTC/USDT", bar(9))
    assert buffer.last_close("BTC/USDT") == T0 + timedelta(minutes=10)


def test_client_order_ids_name_session_symbol_and_bar() -> None:
    at = T0 + timedelta(hours=1)
    assert client_order_id("s1", "BTC/USDT", at) == "s1-BTCUSDT-20240805T0100-d"
    assert client_order_id("s1", "BTC/USDT", at) != client_order_id("s2", "BTC/USDT", at)

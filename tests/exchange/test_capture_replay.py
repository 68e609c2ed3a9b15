"""The Binance websocket capture (2024-08-08 23:54-24:00 UTC) replayed through the real alpaca-py clients.

The expected values come from the raw capture files, parsed here independently of the exchange: the
clock offset (the recorder's clock against Binance's event times), the last quote, trade and book at an
instant, and minute bars summed from trades.
"""

from __future__ import annotations

import bisect
import gzip
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from alpaca.data.historical.crypto import CryptoHistoricalDataClient
from alpaca.data.live.crypto import CryptoDataStream
from alpaca.data.requests import (
    CryptoLatestBarRequest,
    CryptoLatestOrderbookRequest,
    CryptoLatestQuoteRequest,
    CryptoLatestTradeRequest,
    CryptoSnapshotRequest,
)
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest

from crypto_pipeline.exchange import ExchangeServer
from crypto_pipeline.exchange.venue import Venue

from .conftest import CAPTURE, DATA_2024, KEY, SECRET, make_config, running, wait_for

pytestmark = pytest.mark.requires_data("binance-ws-sample-20240808")

NS = 1_000_000_000
MINUTE = 60 * NS
BTC_FILE = "btcusdt_20240808.gz"


def ns(text: str) -> int:
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return int(moment.timestamp()) * NS + moment.microsecond * 1000


def to_datetime(t_ns: int) -> datetime:
    """What alpaca-py makes of a nanosecond timestamp: microseconds, truncated."""
    return datetime.fromtimestamp(t_ns // NS, tz=UTC).replace(microsecond=t_ns % NS // 1000)


def read_raw(path: Path) -> list[tuple[int, dict]]:
    with gzip.open(path, "rt") as handle:
        return [(int(stamp), json.loads(body)) for stamp, body in (line.split(" ", 1) for line in handle)]


def offset_of(*files: list[tuple[int, dict]]) -> int:
    """Binance event time minus receive time, at its largest: the shift that makes no latency negative."""
    return max(
        message["data"]["E"] * 1_000_000 - received
        for rows in files
        for received, message in rows
        if "E" in message.get("data", {})
    )


def levels(raw: list[list[str]]) -> list[tuple[float, float]]:
    return [(float(price), float(size)) for price, size in raw]


@dataclass
class RawCapture:
    """One symbol's capture on the replay clock (receive time + offset), straight from the file."""

    quotes: list[tuple[int, float, float, float, float]]  # at, bid, bid size, ask, ask size
    trades: list[tuple[int, int, int, float, float]]  # at, traded at, id, price, size
    snapshot: tuple[int, int, dict[float, float], dict[float, float]]  # at, lastUpdateId, bids, asks
    diffs: list[tuple[int, int, int, list, list]]  # at, event time, last id, bids, asks

    @classmethod
    def parse(cls, rows: list[tuple[int, dict]], offset: int) -> RawCapture:
        quotes, trades, diffs, snapshot = [], [], [], None
        for received, message in rows:
            at = received + offset
            if "lastUpdateId" in message:
                snapshot = (
                    at,
                    message["lastUpdateId"],
                    dict(levels(message["bids"])),
                    dict(levels(message["asks"])),
                )
                continue
            stream, data = message["stream"], message["data"]
            if stream.endswith("@bookTicker"):
                quotes.append((at, float(data["b"]), float(data["B"]), float(data["a"]), float(data["A"])))
            elif stream.endswith("@trade"):
                trades.append((at, data["T"] * 1_000_000, data["t"], float(data["p"]), float(data["q"])))
            else:
                diffs.append((at, data["E"] * 1_000_000, data["u"], levels(data["b"]), levels(data["a"])))
        assert snapshot is not None
        return cls(quotes, trades, snapshot, diffs)

    def last_quote(self, t: int) -> tuple[int, float, float, float, float]:
        return [quote for quote in self.quotes if quote[0] <= t][-1]

    def last_trade(self, t: int) -> tuple[int, int, int, float, float]:
        return [trade for trade in self.trades if trade[0] <= t][-1]

    def book_at(self, t: int) -> tuple[int, list[tuple[float, float]], list[tuple[float, float]]]:
        """The snapshot plus every later diff received by t: (event time, bids best first, asks best first)."""
        _, last_id, bids, asks = self.snapshot
        bids, asks, event = dict(bids), dict(asks), 0
        for at, event_ns, update_id, bid_levels, ask_levels in self.diffs:
            if at > t or update_id <= last_id:
                continue
            for side, changes in ((bids, bid_levels), (asks, ask_levels)):
                for price, size in changes:
                    side.pop(price, None) if size == 0 else side.__setitem__(price, size)
            event = event_ns
        return event, sorted(bids.items(), reverse=True), sorted(asks.items())

    def minute_bar(self, minute: int, received_by: int | None = None) -> dict[str, float]:
        trades = sorted(
            (traded, trade_id, price, size)
            for at, traded, trade_id, price, size in self.trades
            if minute <= traded < minute + MINUTE and (received_by is None or at <= received_by)
        )
        volume = sum(size for *_, size in trades)
        return {
            "open": trades[0][2],
            "high": max(price for _, _, price, _ in trades),
            "low": min(price for _, _, price, _ in trades),
            "close": trades[-1][2],
            "volume": volume,
            "trade_count": len(trades),
            "vwap": sum(price * size for _, _, price, size in trades) / volume,
        }


@pytest.fixture(scope="module")
def raw_rows() -> tuple[list[tuple[int, dict]], int]:
    """The BTC capture's (receive ns, message) lines, and the day's clock offset."""
    btc = read_raw(CAPTURE / BTC_FILE)
    eth = read_raw(CAPTURE / "ethusdt_20240808.gz")
    return btc, offset_of(btc, eth)  # one recorder, one clock: one offset for both files


@pytest.fixture(scope="module")
def raw_btc(raw_rows: tuple[list[tuple[int, dict]], int]) -> RawCapture:
    return RawCapture.parse(*raw_rows)


def bar_fields(bar: object) -> dict[str, float]:
    return {
        name: getattr(bar, name) for name in ("open", "high", "low", "close", "volume", "trade_count", "vwap")
    }


def same_bar(got: object, expected: dict[str, float]) -> bool:
    return bar_fields(got) == pytest.approx(expected, rel=1e-12)


class Collector:
    """Handlers for alpaca-py streams that keep what arrives, in arrival order."""

    def __init__(self) -> None:
        self.items: list[tuple[str, object]] = []
        self.lock = threading.Lock()

    def handler(self, kind: str):  # noqa: ANN201 - an async handler for alpaca-py
        async def collect(item: object) -> None:
            with self.lock:
                self.items.append((kind, item))

        return collect

    def of(self, kind: str) -> list:
        with self.lock:
            return [item for k, item in self.items if k == kind]


# --- REST at a frozen clock inside the window ---------------------------------------------------------
FROZEN_AT = "2024-08-08T23:56:30.123456"


@pytest.fixture(scope="module")
def frozen(capture_days_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExchangeServer]:
    """A stepped clock that nobody steps: it stays at FROZEN_AT."""
    db = tmp_path_factory.mktemp("frozen") / "exchange.sqlite"
    config = make_config(db, data_dir=capture_days_data, start=FROZEN_AT, speed=0.0, stepped=True)
    with ExchangeServer(config) as server:
        yield server


def test_rest_latest_quote_trade_and_book_are_the_captures_at_the_replay_clock(
    frozen: ExchangeServer, raw_btc: RawCapture
) -> None:
    client = CryptoHistoricalDataClient(KEY, SECRET, url_override=frozen.base_url)
    now = ns(FROZEN_AT)
    assert TradingClient(KEY, SECRET, url_override=frozen.base_url).get_clock().timestamp == to_datetime(now)

    quote = client.get_crypto_latest_quote(CryptoLatestQuoteRequest(symbol_or_symbols="BTC/USDT"))["BTC/USDT"]
    at, bid, bid_size, ask, ask_size = raw_btc.last_quote(now)
    assert (quote.bid_price, quote.bid_size, quote.ask_price, quote.ask_size) == (
        bid,
        bid_size,
        ask,
        ask_size,
    )
    assert quote.timestamp == to_datetime(at)

    trade = client.get_crypto_latest_trade(CryptoLatestTradeRequest(symbol_or_symbols="BTC/USDT"))["BTC/USDT"]
    _, traded, trade_id, price, size = raw_btc.last_trade(now)
    assert (trade.id, trade.price, trade.size, trade.timestamp) == (
        trade_id,
        price,
        size,
        to_datetime(traded),
    )

    book = client.get_crypto_latest_orderbook(CryptoLatestOrderbookRequest(symbol_or_symbols="BTC/USDT"))[
        "BTC/USDT"
    ]
    event, bids, asks = raw_btc.book_at(now)
    assert [(level.price, level.size) for level in book.bids] == bids
    assert [(level.price, level.size) for level in book.asks] == asks
    assert book.timestamp == to_datetime(event) and bids[0][0] < asks[0][0]


def test_the_rebuilt_book_top_is_binances_own_best_bid_ask_after_every_diff(
    frozen: ExchangeServer, raw_rows: tuple[list[tuple[int, dict]], int]
) -> None:
    """bookTicker is Binance's best bid/ask, stamped with the same update ids as the depth diffs: after a
    diff ending at id u, the rebuilt book's top must be the last bookTicker with an id <= u (price and
    size). An invented, missed or misapplied level would show here."""
    rows, offset = raw_rows
    tickers = sorted(
        (m["data"]["u"], m["data"]) for _, m in rows if m.get("stream", "").endswith("@bookTicker")
    )
    ids = [update_id for update_id, _ in tickers]
    diffs = [(received + offset, m["data"]["u"]) for received, m in rows if "@depth" in m.get("stream", "")]
    captured = frozen.venue.market.captured("BTC/USDT", ns(FROZEN_AT), load=True)
    checked = 0
    for at, last_id in diffs[5::7]:  # every 7th diff: ~500 checks across the whole capture
        book = captured.book_at(at)
        ticker = tickers[bisect.bisect_right(ids, last_id) - 1][1]
        assert book.bids[0] == (float(ticker["b"]), float(ticker["B"]))
        assert book.asks[0] == (float(ticker["a"]), float(ticker["A"]))
        checked += 1
    assert checked > 450


def test_rest_latest_bar_and_snapshot_carry_the_minute_bar_built_from_captured_trades(
    frozen: ExchangeServer, raw_btc: RawCapture
) -> None:
    client = CryptoHistoricalDataClient(KEY, SECRET, url_override=frozen.base_url)
    expected = raw_btc.minute_bar(ns("2024-08-08T23:55:00"))  # the last minute complete at 23:56:30
    latest = client.get_crypto_latest_bar(CryptoLatestBarRequest(symbol_or_symbols="BTC/USDT"))["BTC/USDT"]
    assert latest.timestamp == datetime(2024, 8, 8, 23, 55, tzinfo=UTC) and same_bar(latest, expected)
    snapshot = client.get_crypto_snapshot(CryptoSnapshotRequest(symbol_or_symbols="BTC/USDT"))["BTC/USDT"]
    assert same_bar(snapshot.minute_bar, expected)
    assert snapshot.latest_quote.ask_price == raw_btc.last_quote(ns(FROZEN_AT))[3]
    # the day so far: the recorded 5m bars up to 23:55, then the captured 23:55 minute
    day = pl.read_parquet(DATA_2024 / "bars_5m.parquet").filter(
        pl.col("symbol") == "BTC/USDT",
        pl.col("timestamp").is_between(
            datetime(2024, 8, 8, tzinfo=UTC), datetime(2024, 8, 8, 23, 50, tzinfo=UTC)
        ),
    )
    assert snapshot.daily_bar.volume == pytest.approx(day["volume"].sum() + expected["volume"])
    assert snapshot.daily_bar.high == max(day["high"].max(), expected["high"])


def test_a_market_order_inside_the_window_fills_at_the_captured_ask(
    frozen: ExchangeServer, raw_btc: RawCapture
) -> None:
    trading = TradingClient(KEY, SECRET, paper=True, url_override=frozen.base_url)
    order = trading.submit_order(
        MarketOrderRequest(symbol="BTC/USDT", qty=0.001, side=OrderSide.BUY, time_in_force=TimeInForce.GTC)
    )
    filled = trading.get_order_by_id(order.id)
    ask = raw_btc.last_quote(ns(FROZEN_AT))[3]
    assert filled.status == "filled"
    # the captured ask plus a sliver of impact (0.001 BTC against a 5m bar of ~120 BTC); the spread
    # model would have quoted above the last recorded close, 61828
    assert ask <= float(filled.filled_avg_price) <= ask * (1 + 1e-5) < 61828


# --- the stream -------------------------------------------------------------------------------------
def start_at(capture_days_data: Path, tmp_path: Path, start: str, **overrides: object) -> ExchangeServer:
    config = make_config(
        tmp_path / "exchange.sqlite", data_dir=capture_days_data, start=start, speed=0.0, **overrides
    )
    return ExchangeServer(config).start()


def test_the_stream_replays_the_captures_trades_quotes_and_book_for_btc(
    capture_days_data: Path, tmp_path: Path, raw_btc: RawCapture
) -> None:
    """At speed 0 (as fast as the client reads) from 23:55:00: the client sees exactly the capture's
    messages received after 23:55:00, in order; the book first in full, then as updates."""
    start = ns("2024-08-08T23:55:00")
    server = start_at(capture_days_data, tmp_path, "2024-08-08T23:55:00")
    try:
        stream = CryptoDataStream(KEY, SECRET, url_override=server.data_stream_url)
        got = Collector()
        stream.subscribe_trades(got.handler("t"), "BTC/USDT")
        stream.subscribe_quotes(got.handler("q"), "BTC/USDT")
        stream.subscribe_orderbooks(got.handler("o"), "BTC/USDT")
        with running(stream):
            wait_for(lambda: min(len(got.of("t")), len(got.of("q")), len(got.of("o"))) >= 200, timeout=30)
    finally:
        server.stop()

    trades, quotes, books = got.of("t")[:200], got.of("q")[:200], got.of("o")[:200]
    expected_trades = [trade for trade in raw_btc.trades if trade[0] > start][:200]
    assert [(t.id, t.price, t.size, t.timestamp) for t in trades] == [
        (trade_id, price, size, to_datetime(traded)) for _, traded, trade_id, price, size in expected_trades
    ]
    expected_quotes = [quote for quote in raw_btc.quotes if quote[0] > start][:200]
    assert [(q.bid_price, q.bid_size, q.ask_price, q.ask_size, q.timestamp) for q in quotes] == [
        (bid, bid_size, ask, ask_size, to_datetime(at))
        for at, bid, bid_size, ask, ask_size in expected_quotes
    ]

    first, updates = books[0], books[1:]
    _, bids, asks = raw_btc.book_at(start)
    assert first.reset and [(lv.price, lv.size) for lv in first.bids] == bids
    assert [(lv.price, lv.size) for lv in first.asks] == asks
    expected_diffs = [diff for diff in raw_btc.diffs if diff[0] > start][: len(updates)]
    assert not any(update.reset for update in updates)
    assert [
        ([(lv.price, lv.size) for lv in u.bids], [(lv.price, lv.size) for lv in u.asks]) for u in updates
    ] == [(bid_levels, ask_levels) for *_, bid_levels, ask_levels in expected_diffs]
    assert any(lv.size == 0 for update in updates for lv in update.bids + update.asks)  # deletions travel too
    # the client's book, kept from the snapshot and the updates, is the capture's book and never crosses
    book_bids, book_asks = dict(bids), dict(asks)
    for update in updates:
        for side, changes in ((book_bids, update.bids), (book_asks, update.asks)):
            for level in changes:
                side.pop(level.price, None) if level.size == 0 else side.__setitem__(level.price, level.size)
        assert max(book_bids) < min(book_asks)
    _, bids_then, asks_then = raw_btc.book_at(expected_diffs[-1][0])
    assert sorted(book_bids.items(), reverse=True) == bids_then and sorted(book_asks.items()) == asks_then


def test_minute_bars_from_captured_trades_stand_in_for_the_recorded_bar_they_overlap(
    capture_days_data: Path, tmp_path: Path, raw_btc: RawCapture
) -> None:
    """From 23:54:50: the recorded 23:50 bar (5m), the captured minutes 23:55-23:59, then the recorded
    00:00 bar; the minutes add up to the recorded 23:55 bar they replace, daily bars follow, and no `u`
    comes because no trade in this capture arrived after its minute's bar was published."""
    server = start_at(capture_days_data, tmp_path, "2024-08-08T23:54:50")
    try:
        stream = CryptoDataStream(KEY, SECRET, url_override=server.data_stream_url)
        got = Collector()
        stream.subscribe_bars(got.handler("b"), "BTC/USDT")
        stream.subscribe_updated_bars(got.handler("u"), "BTC/USDT")
        stream.subscribe_daily_bars(got.handler("d"), "BTC/USDT")
        with running(stream):
            wait_for(lambda: any(bar.timestamp.hour == 0 for bar in got.of("b")), timeout=30)
    finally:
        server.stop()

    bars = got.of("b")[:7]  # the replay runs on while the client is being stopped
    minutes = [datetime(2024, 8, 8, 23, m, tzinfo=UTC) for m in range(55, 60)]
    assert [bar.timestamp for bar in bars] == [
        datetime(2024, 8, 8, 23, 50, tzinfo=UTC),
        *minutes,
        datetime(2024, 8, 9, tzinfo=UTC),
    ]
    for bar, minute in zip(bars[1:6], minutes, strict=True):
        minute_ns = int(minute.timestamp()) * NS
        assert same_bar(bar, raw_btc.minute_bar(minute_ns, received_by=minute_ns + MINUTE))
    recorded = pl.read_parquet(DATA_2024 / "bars_5m.parquet").filter(
        pl.col("symbol") == "BTC/USDT", pl.col("timestamp") == datetime(2024, 8, 8, 23, 55, tzinfo=UTC)
    )
    captured = bars[1:6]
    assert (
        captured[0].open,
        max(b.high for b in captured),
        min(b.low for b in captured),
        captured[-1].close,
    ) == (
        recorded.row(0, named=True)["open"],
        recorded["high"][0],
        recorded["low"][0],
        recorded["close"][0],
    )
    assert sum(b.volume for b in captured) == pytest.approx(recorded["volume"][0])

    late = [t for t in raw_btc.trades if t[0] > t[1] - t[1] % MINUTE + MINUTE]
    assert late == [] and got.of("u") == []

    daily = [d for d in got.of("d") if d.timestamp == datetime(2024, 8, 8, tzinfo=UTC)]
    volumes = [d.volume for d in daily]
    assert len(daily) >= 6 and volumes == sorted(volumes)
    day = pl.read_parquet(DATA_2024 / "bars_1d.parquet").filter(
        pl.col("symbol") == "BTC/USDT", pl.col("timestamp") == datetime(2024, 8, 8, tzinfo=UTC)
    )
    assert (daily[-1].open, daily[-1].high, daily[-1].low, daily[-1].close) == tuple(
        day.select("open", "high", "low", "close").row(0)
    )
    assert daily[-1].volume == pytest.approx(day["volume"][0])


def test_a_trade_received_after_its_minute_bar_was_published_yields_an_updated_bar(
    capture_days_data: Path, tmp_path: Path
) -> None:
    """A copy of the BTC capture in which the last trade of 23:56 is received at 23:57:04 instead: the
    23:56 bar (`b`, 23:57:00) lacks it, and the corrected bar comes on `u` at 23:57:30, before 23:57's `b`."""
    with gzip.open(CAPTURE / BTC_FILE, "rt") as handle:
        lines = [(int(stamp), body) for stamp, body in (line.split(" ", 1) for line in handle)]
    rows = [(received, json.loads(body)) for received, body in lines]
    offset = offset_of(rows)
    minute = ns("2024-08-08T23:56:00")
    trade_rows = [
        index
        for index, (_, message) in enumerate(rows)
        if message.get("stream", "").endswith("@trade")
        and minute <= message["data"]["T"] * 1_000_000 < minute + MINUTE
    ]
    moved = max(trade_rows, key=lambda index: rows[index][1]["data"]["T"])
    moved_size = float(rows[moved][1]["data"]["q"])
    late_at = ns("2024-08-08T23:57:04") - offset
    rows[moved], lines[moved] = (late_at, rows[moved][1]), (late_at, lines[moved][1])
    # Up to 23:58:10 is enough (the 23:57 bar is published at 23:58:00) and keeps the copy small.
    keep = sorted(
        (
            index
            for index, (received, _) in enumerate(lines)
            if received + offset <= ns("2024-08-08T23:58:10")
        ),
        key=lambda index: lines[index][0],
    )
    rows = [rows[index] for index in keep]
    capture = tmp_path / "late-capture"
    capture.mkdir()
    with gzip.open(capture / BTC_FILE, "wt", compresslevel=1) as handle:
        handle.writelines(f"{lines[index][0]} {lines[index][1]}" for index in keep)
    doctored = RawCapture.parse(rows, offset)

    server = start_at(capture_days_data, tmp_path, "2024-08-08T23:56:30", capture_dir=capture)
    try:
        stream = CryptoDataStream(KEY, SECRET, url_override=server.data_stream_url)
        got = Collector()
        stream.subscribe_bars(got.handler("b"), "BTC/USDT")
        stream.subscribe_updated_bars(got.handler("u"), "BTC/USDT")
        with running(stream):
            wait_for(lambda: len(got.of("b")) >= 2, timeout=30)
    finally:
        server.stop()

    with got.lock:
        sequence = [(kind, bar.timestamp) for kind, bar in got.items][:3]
    at_2356, at_2357 = datetime(2024, 8, 8, 23, 56, tzinfo=UTC), datetime(2024, 8, 8, 23, 57, tzinfo=UTC)
    assert sequence == [("b", at_2356), ("u", at_2356), ("b", at_2357)]
    published, updated = got.of("b")[0], got.of("u")[0]
    assert same_bar(published, doctored.minute_bar(minute, received_by=minute + MINUTE))
    assert same_bar(updated, doctored.minute_bar(minute))  # every trade of the minute
    assert updated.trade_count == published.trade_count + 1
    assert updated.volume == pytest.approx(published.volume + moved_size)


def test_without_a_usable_capture_quotes_come_from_bars_and_the_reason_is_clear(
    capture_days_data: Path, tmp_path: Path
) -> None:
    at = ns(FROZEN_AT)
    broken = tmp_path / "broken-capture"
    broken.mkdir()
    with gzip.open(broken / BTC_FILE, "wt") as handle:
        handle.write("1723161253937085768 {not json\n")
    for name, capture_dir in (("off", None), ("broken", broken)):
        venue = Venue(
            make_config(
                tmp_path / f"{name}.sqlite",
                data_dir=capture_days_data,
                start=FROZEN_AT,
                capture_dir=capture_dir,
            )
        )
        try:
            quote = venue.market.latest("quotes", ["BTC/USDT"], at)["BTC/USDT"]
            assert quote["t"] == "2024-08-08T23:55:00Z"  # derived from the 23:50 bar, known at 23:55
        finally:
            venue.store.close()
    assert "btcusdt_20240808.gz line 1" in venue.market.capture.days[0].error
    with pytest.raises(FileNotFoundError, match=r"capture directory .*nowhere does not exist"):
        Venue(
            make_config(tmp_path / "bad.sqlite", data_dir=capture_days_data, capture_dir=tmp_path / "nowhere")
        )

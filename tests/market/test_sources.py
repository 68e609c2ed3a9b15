"""Sources: the recorded files (Parquet and Alpaca CSVs) and the Alpaca REST source through alpaca-py.

AlpacaSource is driven against a loopback stub that speaks the documented wire shape
(`{"bars": {sym: [{t,o,h,l,c,v,n,vw}]}, "next_page_token": ...}`), serving real bars in two pages
after a 429 and a 500: alpaca-py's own pagination plus our retry policy must get every bar.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import polars as pl
import pytest

from crypto_pipeline.config import Settings
from crypto_pipeline.errors import SourceError, UserInputError
from crypto_pipeline.market.schema import BAR_SCHEMA
from crypto_pipeline.market.sources import AlpacaSource, BarSource, RecordedSource, make_source
from crypto_pipeline.market.timeframes import Timeframe

START = datetime(2024, 2, 1, tzinfo=UTC)
END = START + timedelta(hours=2)
KEY, SECRET = "PKTEST-not-a-real-key", "secret-that-must-not-leak"


@pytest.fixture(scope="module")
def binance(recorded) -> Path:
    return recorded("binance-spot-2024")


def _real(binance: Path, symbols: list[str]) -> pl.DataFrame:
    return (
        pl.scan_parquet(binance / "bars_5m.parquet")
        .filter(
            pl.col("symbol").is_in(symbols) & (pl.col("timestamp") >= START) & (pl.col("timestamp") < END)
        )
        .sort("symbol", "timestamp")
        .collect()
    )


def _wire(frame: pl.DataFrame) -> list[dict[str, object]]:
    return [
        {
            "t": row["timestamp"].isoformat().replace("+00:00", "Z"),
            "o": row["open"],
            "h": row["high"],
            "l": row["low"],
            "c": row["close"],
            "v": row["volume"],
            "n": None,
            "vw": None,
        }
        for row in frame.iter_rows(named=True)
    ]


class StubAlpaca(ThreadingHTTPServer):
    """Answers the scripted `failures` (HTTP statuses) first, then serves `pages` in order."""

    def __init__(self, pages: list[dict[str, list[dict[str, object]]]], failures: list[int]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.pages, self.failures = pages, list(failures)
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StubAlpaca

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: dict[str, object]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        query = parse_qs(url.query)
        self.server.requests.append((url.path, query, dict(self.headers)))
        if self.server.failures:
            status = self.server.failures.pop(0)
            self._send(status, {"code": status, "message": "scripted failure"})
        elif url.path == "/v1beta3/crypto/us/bars":
            page = int(query.get("page_token", ["0"])[0])
            last = page == len(self.server.pages) - 1
            self._send(
                200, {"bars": self.server.pages[page], "next_page_token": None if last else str(page + 1)}
            )
        elif url.path == "/v1beta3/crypto/us/latest/bars":
            latest = {sym: bars[-1] for page in self.server.pages for sym, bars in page.items()}
            asked = query["symbols"][0].split(",")
            self._send(200, {"bars": {s: latest[s] for s in asked if s in latest}})
        else:
            self._send(404, {"code": 40410000, "message": "not found"})


@pytest.fixture
def stub(binance: Path) -> Iterator[StubAlpaca]:
    real = _real(binance, ["BTC/USDT", "ETH/USDT"])
    # Alpaca pages are ordered by symbol: page one holds BTC, page two ETH.
    pages = [{sym: _wire(real.filter(pl.col("symbol") == sym))} for sym in ("BTC/USDT", "ETH/USDT")]
    server = StubAlpaca(pages, failures=[429, 500])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _alpaca(url: str, **kwargs: object) -> AlpacaSource:
    return AlpacaSource(KEY, SECRET, url_override=url, retry_wait_min=0.01, retry_wait_max=0.05, **kwargs)


def test_alpaca_source_pages_through_429_and_500_and_returns_every_bar(
    stub: StubAlpaca, binance: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = _alpaca(stub.url)
    with caplog.at_level(logging.WARNING):
        bars = source.fetch_bars(["BTC/USDT", "ETH/USDT"], Timeframe.M5, START, END)

    expected = _real(binance, ["BTC/USDT", "ETH/USDT"])
    assert bars.schema == BAR_SCHEMA
    assert bars.select(expected.columns).equals(
        expected.with_columns(pl.col("timestamp").dt.cast_time_unit("us"))
    )
    bar_requests = [(path, q) for path, q, _ in stub.requests if path.endswith("/bars")]
    # 429, 500, then page one, then page two: retried per page, not from the start.
    assert [q.get("page_token") for _, q in bar_requests] == [None, None, None, ["1"]]
    assert bar_requests[0][1]["timeframe"] == ["5Min"] and bar_requests[0][1]["symbols"] == [
        "BTC/USDT,ETH/USDT"
    ]
    assert "HTTP 429" in caplog.text and "HTTP 500" in caplog.text
    # Keys travel in headers only and never reach a log line.
    assert stub.requests[-1][2]["APCA-API-KEY-ID"] == KEY
    assert KEY not in caplog.text and SECRET not in caplog.text


def test_alpaca_source_gives_up_with_one_clear_message_without_secrets(stub: StubAlpaca) -> None:
    stub.failures = [503] * 10
    source = _alpaca(stub.url, retry_attempts=3)
    with pytest.raises(SourceError) as caught:
        source.fetch_bars(["BTC/USDT"], Timeframe.M5, START, END)
    message = str(caught.value)
    assert "failed after 3 attempts" in message and "HTTP 503" in message
    assert KEY not in message and SECRET not in message
    assert len(stub.requests) == 3


def test_alpaca_source_turns_a_rejected_request_into_a_user_error(stub: StubAlpaca) -> None:
    stub.failures = [400]
    with pytest.raises(UserInputError, match="rejected bars BTC/USDT 5m .*HTTP 400"):
        _alpaca(stub.url).fetch_bars(["BTC/USDT"], Timeframe.M5, START, END)
    assert len(stub.requests) == 1  # a client error is not retried


def test_alpaca_source_finds_unknown_symbols_from_the_latest_bars(stub: StubAlpaca) -> None:
    stub.failures = []
    source = _alpaca(stub.url)
    assert source.unknown_symbols(["ETH/USDT", "NOPE/USD", "BTC/USDT"], Timeframe.M5) == ["NOPE/USD"]
    assert stub.requests[-1][0] == "/v1beta3/crypto/us/latest/bars"


def test_alpaca_source_needs_keys_only_to_list_symbols() -> None:
    with pytest.raises(UserInputError, match="needs ALPACA_API_KEY"):
        AlpacaSource(url_override="http://127.0.0.1:9").symbols()


def test_recorded_source_reads_only_the_requested_symbols_and_half_open_range(binance: Path) -> None:
    source = RecordedSource(binance)
    bars = source.fetch_bars(["ETH/USDT", "SOL/USDT"], Timeframe.M5, START, END)
    assert bars.schema == BAR_SCHEMA
    assert sorted(bars["symbol"].unique()) == ["ETH/USDT", "SOL/USDT"]
    assert bars["timestamp"].min() == START and bars["timestamp"].max() == END - timedelta(minutes=5)
    assert bars.height == 2 * 24
    assert source.fetch_bars(["ETH/USDT"], Timeframe.M5, END, END).is_empty()


def test_recorded_source_lists_symbols_per_timeframe_and_reports_unknown_ones(binance: Path) -> None:
    source = RecordedSource(binance)
    assert [tf.value for tf in source.timeframes()] == ["5m", "15m", "1h", "4h", "1d"]
    assert len(source.symbols(Timeframe.M5)) == 24 and len(source.symbols(Timeframe.H1)) == 136
    assert source.unknown_symbols(["BTC/USDT", "XYZ/USDT"], Timeframe.M5) == ["XYZ/USDT"]


def test_recorded_source_reads_alpaca_shaped_csvs_with_trade_count_and_vwap(recorded) -> None:
    source = RecordedSource(recorded("alpaca-btcusd-2021"))
    assert source.symbols() == ["BTC/USD"]
    bars = source.fetch_bars(
        ["BTC/USD"], Timeframe.M1, datetime(2021, 1, 1, tzinfo=UTC), datetime(2021, 1, 2, tzinfo=UTC)
    )
    first = bars.row(0, named=True)
    assert first["timestamp"] == datetime(2021, 1, 1, 6, tzinfo=UTC)
    assert (first["open"], first["trade_count"], first["vwap"]) == (29255.71, 43.0, 29265.1783848224)
    assert bars.height == 1079  # 06:00 to midnight, one bar a minute, less one quiet minute at 08:xx


def test_recorded_source_explains_what_is_missing(tmp_path: Path, binance: Path) -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        RecordedSource(tmp_path / "nowhere")
    with pytest.raises(UserInputError, match="no recorded bars"):
        RecordedSource(tmp_path)
    with pytest.raises(UserInputError, match="no 1m bars .* recorded timeframes there: 5m, 15m, 1h, 4h, 1d"):
        RecordedSource(binance).fetch_bars(["BTC/USDT"], Timeframe.M1, START, END)


def test_make_source_follows_settings_and_overrides(tmp_path: Path, binance: Path) -> None:
    settings = Settings(market_data_dir=binance, alpaca_data_url="http://127.0.0.1:1")
    recorded = make_source(settings)
    alpaca = make_source(settings, kind="alpaca", url="http://127.0.0.1:2")
    assert isinstance(recorded, RecordedSource) and recorded.data_dir == binance
    assert isinstance(alpaca, AlpacaSource) and alpaca.url_override == "http://127.0.0.1:2"
    assert isinstance(recorded, BarSource) and isinstance(alpaca, BarSource)
    with pytest.raises(UserInputError, match="unknown source 'ftp'"):
        make_source(settings, kind="ftp")

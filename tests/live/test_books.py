"""Quotes and order books in the live loop: the book kept from the stream is the exchange's own, a
malformed message is skipped (and a book it left unknown is fetched again), and the prompt shows the
book only when the run says so; otherwise it is byte for byte the prompt of the states built from bars."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from alpaca.data.historical.crypto import CryptoHistoricalDataClient
from alpaca.data.requests import CryptoLatestOrderbookRequest, CryptoLatestQuoteRequest

from crypto_pipeline.config import SHARED_MARKET_DATA
from crypto_pipeline.live.book import LiveBooks, MalformedMessage
from crypto_pipeline.live.session import LiveSession
from crypto_pipeline.live.states import states_at
from crypto_pipeline.llm.prompts import build_user_prompt
from crypto_pipeline.llm.rule_based import RuleBased
from crypto_pipeline.state import MarketState, OrderBookSnapshot, Portfolio
from crypto_pipeline.warehouse import Warehouse

from .conftest import KEY, SECRET, START, SYMBOLS, Running, clients_for, live_config

T0 = datetime(2024, 8, 8, 23, 58, tzinfo=UTC)
CAPTURE = SHARED_MARKET_DATA / "binance-ws-sample-20240808"


def book_message(symbol: str, bids, asks, reset: bool = False, at: datetime = T0) -> dict:  # noqa: ANN001
    message = {
        "T": "o",
        "S": symbol,
        "t": at,
        "b": [{"p": p, "s": s} for p, s in bids],
        "a": [{"p": p, "s": s} for p, s in asks],
    }
    if reset:
        message["r"] = True
    return message


# --- the book alone ------------------------------------------------------------------------------


def test_a_full_book_then_updates_set_and_remove_levels_and_a_reset_replaces_it() -> None:
    books = LiveBooks(["BTC/USDT"], max_levels=50, depth_levels=2)
    books.on_book(book_message("BTC/USDT", [(100, 1), (99, 2), (98, 3)], [(101, 1), (102, 4)], reset=True))
    books.on_book(book_message("BTC/USDT", [(100, 0), (99.5, 5)], [(101, 2), (103, 1)]))
    assert books.top("BTC/USDT", 3) == ([(99.5, 5), (99, 2), (98, 3)], [(101, 2), (102, 4), (103, 1)])
    view = books.view("BTC/USDT")
    assert view is not None and view.at == T0
    assert view.snapshot == OrderBookSnapshot(bid=99.5, ask=101, bid_depth=7, ask_depth=6)
    assert books.counts.levels_removed == 1 and books.counts.book_updates == 1
    books.on_book(book_message("BTC/USDT", [(90, 1)], [(91, 1)], reset=True))
    assert books.top("BTC/USDT", 5) == ([(90, 1)], [(91, 1)])


def test_a_malformed_update_changes_nothing_and_leaves_the_book_unknown_until_a_full_one() -> None:
    books = LiveBooks(["BTC/USDT", "ETH/USDT"])
    books.on_book(book_message("BTC/USDT", [(100, 1)], [(101, 1)], reset=True))
    bad = book_message("BTC/USDT", [(100, 0)], [(101, 1)]) | {"a": [{"p": "x", "s": 1}]}
    with pytest.raises(MalformedMessage, match="bad a price") as raised:
        books.on_book(bad)
    assert raised.value.lost == "BTC/USDT"
    assert books.view("BTC/USDT") is None  # unknown, not guessed
    books.on_book(book_message("BTC/USDT", [(99, 1)], []))  # an update to an unknown book: ignored
    assert books.view("BTC/USDT") is None and books.counts.updates_ignored == 1
    books.on_book(book_message("BTC/USDT", [(98, 1)], [(99, 2)], reset=True))
    assert books.top("BTC/USDT", 5) == ([(98, 1)], [(99, 2)])
    with pytest.raises(MalformedMessage, match="bad bp"):
        books.on_quote({"T": "q", "S": "ETH/USDT", "t": T0, "bp": None, "bs": 1, "ap": 2, "as": 1})
    assert books.quote("ETH/USDT") is None


def test_memory_is_bounded_and_a_crossed_book_gives_no_snapshot() -> None:
    books = LiveBooks(["BTC/USDT"], max_levels=20, depth_levels=5)
    books.on_book(book_message("BTC/USDT", [(1000 - i, 1) for i in range(20)], [(1001, 1)], reset=True))
    for i in range(1000):  # levels far from the touch keep coming: the side stays bounded
        books.on_book(book_message("BTC/USDT", [(500 - i * 0.1, 1)], []))
    assert books.levels_kept() <= 20 * 1.25 + 1
    assert books.top("BTC/USDT", 3)[0] == [(1000, 1), (999, 1), (998, 1)]
    books.on_book(book_message("BTC/USDT", [], [(999.5, 1), (1001, 0)]))
    assert books.view("BTC/USDT") is None  # the best bid crosses the best ask


# --- against the exchange ------------------------------------------------------------------------


def _wait(condition, timeout: float = 30.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout} s")


def _exchange_top(client: CryptoHistoricalDataClient, symbol: str, levels: int) -> tuple[list, list]:
    book = client.get_crypto_latest_orderbook(CryptoLatestOrderbookRequest(symbol_or_symbols=symbol))[symbol]
    return (
        [(lv.price, lv.size) for lv in book.bids[:levels]],
        [(lv.price, lv.size) for lv in book.asks[:levels]],
    )


def _snapshot(bids: list, asks: list) -> OrderBookSnapshot:
    return OrderBookSnapshot(
        bid=bids[0][0], ask=asks[0][0], bid_depth=sum(s for _, s in bids), ask_depth=sum(s for _, s in asks)
    )


class _Thread:
    def __init__(self, session: LiveSession) -> None:
        self.session, self.error = session, None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.session.run()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc

    def wait_batches(self, n: int) -> None:
        _wait(lambda: self.error is not None or self.session.report.decision_batches >= n, 60)
        if self.error is not None:
            raise self.error


@pytest.mark.requires_data("binance-ws-sample-20240808")
def test_the_book_kept_from_the_stream_is_the_exchanges_after_updates_and_the_prompt_shows_it_when_asked(
    start_exchange, tmp_path
) -> None:
    """Inside the Binance capture the book comes in full on subscribe, then as updates that set and
    remove levels: after every step of the clock, the session's top 10 levels and its quote are the
    exchange's own (REST, at the same clock). With `order_book_in_prompt`, the decision's prompt and
    state carry that book."""
    server = start_exchange(capture_dir=CAPTURE, start=T0.isoformat())
    rest = CryptoHistoricalDataClient(KEY, SECRET, url_override=server.base_url)
    warehouse = Warehouse(tmp_path / "wh")
    config = live_config(order_book_in_prompt=True)
    session = LiveSession(config, clients_for(server), RuleBased(), warehouse)
    runner = _Thread(session)
    runner.thread.start()
    try:
        runner.wait_batches(1)  # at 23:00, the close the history reached
        clock = T0
        for _ in range(6):
            clock += timedelta(seconds=10)
            server.advance_to(clock)
            for symbol in SYMBOLS:
                _wait(lambda s=symbol: session.books.top(s, 10) == _exchange_top(rest, s, 10))
                quote = rest.get_crypto_latest_quote(CryptoLatestQuoteRequest(symbol_or_symbols=symbol))[
                    symbol
                ]
                _wait(
                    lambda s=symbol, q=quote: (
                        (kept := session.books.quote(s)) is not None
                        and (kept.bid, kept.bid_size, kept.ask, kept.ask_size)
                        == (q.bid_price, q.bid_size, q.ask_price, q.ask_size)
                    )
                )
        counts = session.books.counts
        assert counts.book_resets == len(SYMBOLS)  # one full book each, on subscribe; updates since
        assert counts.book_updates > 100 and counts.levels_removed > 100
        midnight = datetime(2024, 8, 9, tzinfo=UTC)
        # No stream bar closes at midnight (the capture stands for the last 5m bar): the session decides
        # once the venue clock says midnight has passed, which may be before the stream has brought every
        # message up to midnight. So the stream first catches up to a millisecond before: the decision's
        # state then holds the exchange's book of that moment or of midnight, exactly.
        server.advance_to(midnight - timedelta(milliseconds=1))
        _wait(lambda: session.books.top("BTC/USDT", 10) == _exchange_top(rest, "BTC/USDT", 10))
        before = _snapshot(*_exchange_top(rest, "BTC/USDT", 10))
        # The minute bars of 23:55-24:00 streamed by now do not make that 5m period closed: no decision.
        assert session.report.decision_batches == 1
        server.advance_to(midnight)
        runner.wait_batches(2)
        at_midnight = _snapshot(*_exchange_top(rest, "BTC/USDT", 10))
    finally:
        session.stop("test over")
        runner.thread.join(60)
    row = warehouse.read("decisions").filter(pl.col("time") == midnight, pl.col("symbol") == "BTC/USDT")
    state = MarketState.model_validate_json(row["state"][0])
    assert state.order_book in (before, at_midnight)
    expected = state.order_book
    assert row["prompt"][0] == build_user_prompt(state)
    assert f"book spread {expected.spread_bps:.1f}bp imbalance {expected.imbalance:.2f}" in row["prompt"][0]
    assert json.loads(row["order_book"][0])["bid"] == expected.bid


def test_by_default_the_prompt_has_no_book_and_equals_the_one_from_bars_while_the_book_is_journaled(
    start_exchange, tmp_path, small_data
) -> None:
    """Parity: the states the model was trained and judged on come from bars, which carry no book. With
    `order_book_in_prompt` off (the default) the journaled prompt is byte for byte the prompt of the
    state built from the recorded bars; the book streamed meanwhile is in the journal's `order_book`."""
    server = start_exchange()
    warehouse = Warehouse(tmp_path / "wh")
    session = LiveSession(live_config(), clients_for(server), RuleBased(), warehouse)
    with Running(session, server) as running:
        running.step(1)
    at = START + timedelta(hours=1)
    first = session.buffer.frame()["timestamp"].min()  # the same history as the session's
    recorded = (
        pl.read_parquet(small_data / "bars_5m.parquet")
        .filter(pl.col("timestamp") >= first, pl.col("timestamp") + timedelta(minutes=5) <= at)
        .with_columns(*(pl.lit(None, pl.Float64).alias(c) for c in ("trade_count", "vwap")))
    )
    reference, _ = states_at(recorded, session.config.base, SYMBOLS, at)
    rows = warehouse.read("decisions").filter(pl.col("time") == at).sort("symbol")
    cash = float(session.report.equity_start)
    for symbol, prompt, book in rows.select("symbol", "prompt", "order_book").iter_rows():
        assert prompt == build_user_prompt(
            reference[symbol].with_portfolio(Portfolio(cash=cash, equity=cash))
        )
        assert "book" not in prompt
        # The exchange's book for a bar-only symbol (docs/exchange.md): mid = close, full spread =
        # max(1 bp, 5% x (high - low) / close), level i holds (i + 1) x 0.5% of the bar's volume.
        bar = recorded.filter(pl.col("symbol") == symbol).sort("timestamp").row(-1, named=True)
        journaled = json.loads(book)
        assert journaled["time"] == at.isoformat()
        assert journaled["spread_bps"] == pytest.approx(
            max(1.0, 500 * (bar["high"] - bar["low"]) / bar["close"])
        )
        assert journaled["bid_depth"] == pytest.approx(0.275 * bar["volume"]) and journaled["imbalance"] == 0
    assert session.report.stream_quotes >= len(SYMBOLS) and session.report.book_messages >= len(SYMBOLS)

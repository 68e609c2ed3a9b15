"""A raw Binance spot websocket capture, replayed: what its trades, best bid/ask and order book said at
each instant of the replay clock.

Files are `<symbol>_<YYYYMMDD>.gz` (e.g. `btcusdt_20240808.gz`): gzip, one message a line behind its
nanosecond receive time: `@depth` diffs, `@bookTicker`, `@trade`, and REST depth snapshots
(`lastUpdateId`). A day's files are read together, lazily, the first time the replay clock reaches that
day, because parsing them takes a fraction of a second that most runs never need.

Clock alignment: the recorder's clock is not Binance's (in the shared capture it runs 1.275 s behind, so
raw receive times precede the trades they report). All receive times of a day are shifted by the one
offset that makes the smallest latency zero: `max(E - received)` over the messages that carry Binance's
event time E. On the replay clock nothing is then known before Binance says it happened, and the real
spread of latencies (0 to 25 ms for depth, up to 0.2 s for some trades) is kept.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import re
import threading
from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, NamedTuple

from crypto_pipeline.exchange.book import BarView, DerivedQuote
from crypto_pipeline.exchange.clock import NS_PER_S
from crypto_pipeline.exchange.depth import BookState, CapturedBook, DepthDiff, DepthSnapshot, synchronize
from crypto_pipeline.exchange.minute_bars import MINUTE_NS, BarVersion, CapturedTrade, minute_bar_versions

log = logging.getLogger(__name__)

DAY_NS = 86_400 * NS_PER_S
NS_PER_MS = 1_000_000
# A capture recorded late in its day runs past midnight: it stays in reach for one more day.
REACH_NS = 2 * DAY_NS
_FILE_NAME = re.compile(r"^([A-Za-z0-9]+)_(\d{8})\.gz$")

EventKind = Literal["q", "t", "o", "b", "u"]


class CaptureFormatError(ValueError):
    """A capture file that is not `<receive ns> <json>` lines."""


@dataclass(frozen=True)
class CaptureFile:
    path: Path
    symbol: str  # the data directory's symbol, e.g. BTC/USDT
    day_start_ns: int


class CapturedQuote(NamedTuple):
    at_ns: int
    quote: DerivedQuote


class ReplayEvent(NamedTuple):
    """Something the stream sends at `at_ns`: index points into the symbol's quotes, trades, book steps
    or bar versions, by kind."""

    at_ns: int
    symbol: str
    kind: EventKind
    index: int


def discover(directory: Path, symbols: list[str]) -> list[CaptureFile]:
    """The capture files of `directory` whose symbol the exchange lists (compact names map to ours)."""
    by_compact = {symbol.replace("/", "").upper(): symbol for symbol in symbols}
    found: list[CaptureFile] = []
    for path in sorted(directory.glob("*.gz")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            continue
        symbol = by_compact.get(match.group(1).upper())
        if symbol is None:
            log.warning("capture %s: %s is not a symbol of the bar data; skipped", path.name, match.group(1))
            continue
        day = datetime.strptime(match.group(2), "%Y%m%d").replace(tzinfo=UTC)
        found.append(CaptureFile(path, symbol, int(day.timestamp()) * NS_PER_S))
    return found


def read_lines(path: Path) -> list[tuple[int, dict[str, object]]]:
    """(receive ns, message) pairs in receive order; a malformed line is one clear error."""
    lines: list[tuple[int, dict[str, object]]] = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            stamp, _, body = line.partition(" ")
            try:
                received, message = int(stamp), json.loads(body)
            except ValueError:
                raise CaptureFormatError(
                    f"{path.name} line {number}: expected '<receive time ns> <json message>'"
                ) from None
            if isinstance(message, dict):
                lines.append((received, message))
    lines.sort(key=lambda pair: pair[0])
    return lines


def clock_offset_ns(files: list[list[tuple[int, dict[str, object]]]]) -> int:
    """The shift from the recorder's clock to Binance's: the smallest that leaves no latency negative."""
    offset: int | None = None
    for lines in files:
        for received, message in lines:
            data = message.get("data")
            if isinstance(data, dict) and isinstance(data.get("E"), int):
                gap = data["E"] * NS_PER_MS - received
                offset = gap if offset is None else max(offset, gap)
    return offset or 0


def _levels(raw: object) -> tuple[tuple[float, float], ...]:
    return tuple((float(price), float(size)) for price, size in raw)  # type: ignore[union-attr, misc]


class CapturedSymbol:
    """One symbol's capture on the replay clock. Each view answers only inside the recording: before its
    first message of that kind or after the recording ends, it answers None and the bar-derived model
    takes over."""

    def __init__(self, symbol: str, lines: list[tuple[int, dict[str, object]]], offset_ns: int) -> None:
        self.symbol = symbol
        self.start_ns = lines[0][0] + offset_ns
        self.end_ns = lines[-1][0] + offset_ns
        self.quotes: list[CapturedQuote] = []
        self.trades: list[CapturedTrade] = []
        depth: list[DepthSnapshot | DepthDiff] = []
        for received, message in lines:
            at = received + offset_ns
            if "lastUpdateId" in message:
                depth.append(
                    DepthSnapshot(
                        at, int(message["lastUpdateId"]), _levels(message["bids"]), _levels(message["asks"])
                    )
                )
                continue
            stream, data = str(message.get("stream", "")), message.get("data")
            if not isinstance(data, dict):
                continue
            channel = stream.partition("@")[2]
            if channel == "bookTicker":
                quote = DerivedQuote(float(data["b"]), float(data["B"]), float(data["a"]), float(data["A"]))
                self.quotes.append(CapturedQuote(at, quote))
            elif channel == "trade":
                self.trades.append(
                    CapturedTrade(
                        at_ns=at,
                        trade_ns=int(data["T"]) * NS_PER_MS,
                        id=int(data["t"]),
                        price=float(data["p"]),
                        size=float(data["q"]),
                        # m: the buyer was the maker, so the seller took liquidity.
                        taker_side="S" if data["m"] else "B",
                    )
                )
            elif channel.startswith("depth"):
                depth.append(
                    DepthDiff(
                        at,
                        int(data["E"]) * NS_PER_MS,
                        int(data["U"]),
                        int(data["u"]),
                        _levels(data["b"]),
                        _levels(data["a"]),
                    )
                )
        self.book = CapturedBook(synchronize(depth))
        self.bars: list[BarVersion] = minute_bar_versions(symbol, self.trades, self.start_ns, self.end_ns)
        self._quote_times = [quote.at_ns for quote in self.quotes]
        self._trade_times = [trade.at_ns for trade in self.trades]
        self._bar_times = [version.at_ns for version in self.bars]
        # The minutes the captured bars stand for: the recorded bars overlapping them are not streamed.
        self.minutes_from_ns = -(-self.start_ns // MINUTE_NS) * MINUTE_NS
        self.minutes_until_ns = self.end_ns - self.end_ns % MINUTE_NS

    # --- point-in-time views ------------------------------------------------------------------
    def _inside(self, t_ns: int, first_ns: int | None) -> bool:
        return first_ns is not None and first_ns <= t_ns <= self.end_ns

    def quote_at(self, t_ns: int) -> CapturedQuote | None:
        if not self.quotes or not self._inside(t_ns, self.quotes[0].at_ns):
            return None
        return self.quotes[bisect_right(self._quote_times, t_ns) - 1]

    def trade_at(self, t_ns: int) -> CapturedTrade | None:
        if not self.trades or not self._inside(t_ns, self.trades[0].at_ns):
            return None
        return self.trades[bisect_right(self._trade_times, t_ns) - 1]

    def book_at(self, t_ns: int) -> BookState | None:
        if not self._inside(t_ns, self.book.first_known_ns):
            return None
        return self.book.at(t_ns)

    def minute_bar_at(self, t_ns: int) -> BarView | None:
        """The latest minute bar published by t, in its latest version (bars stay history after the end)."""
        count = bisect_right(self._bar_times, t_ns)
        if not count:
            return None
        latest = max(self.bars[:count], key=lambda version: (version.bar.open_ns, version.at_ns))
        return latest.bar

    def minute_bars_between(self, from_ns: int, until_ns: int, t_ns: int) -> list[BarView]:
        """The latest version, as of t, of each minute bar opening in [from, until)."""
        latest: dict[int, BarView] = {}
        for version in self.bars[: bisect_right(self._bar_times, t_ns)]:
            if from_ns <= version.bar.open_ns < until_ns:
                latest[version.bar.open_ns] = version.bar
        return [latest[minute] for minute in sorted(latest)]

    def covers_minutes_of(self, open_ns: int, close_ns: int) -> bool:
        """Whether [open, close) overlaps the minutes the captured bars stand for."""
        return bool(self.bars) and open_ns < self.minutes_until_ns and close_ns > self.minutes_from_ns

    def events(self) -> list[ReplayEvent]:
        events = [ReplayEvent(q.at_ns, self.symbol, "q", i) for i, q in enumerate(self.quotes)]
        events += [ReplayEvent(t.at_ns, self.symbol, "t", i) for i, t in enumerate(self.trades)]
        events += [ReplayEvent(s.at_ns, self.symbol, "o", i) for i, s in enumerate(self.book.steps)]
        events += [ReplayEvent(v.at_ns, self.symbol, v.kind, i) for i, v in enumerate(self.bars)]
        return events


class CaptureDay:
    """The capture files of one day, loaded together (they share the recorder's clock)."""

    def __init__(self, day_start_ns: int, files: list[CaptureFile]) -> None:
        self.day_start_ns = day_start_ns
        self.files = files
        self.symbols: dict[str, CapturedSymbol] = {}
        self.events: list[ReplayEvent] = []
        self.event_times: list[int] = []
        self.offset_ns = 0
        self.error: str | None = None
        self._lock = threading.Lock()
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def in_reach(self, t_ns: int) -> bool:
        return self.day_start_ns <= t_ns < self.day_start_ns + REACH_NS

    def load(self) -> None:
        """Parse and index the day's files, once (thread-safe)."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            try:
                stamps = tuple((file.path, file.symbol, *_file_stamp(file.path)) for file in self.files)
                self.offset_ns, self.symbols, self.events, self.event_times = _parse_day(stamps)
            except (OSError, EOFError, ValueError, KeyError, TypeError) as error:
                # Said once; the day then replays from bars alone rather than stopping the market.
                self.error = f"capture of {self.files[0].path.parent} unusable: {error!r}"
                log.error(self.error)
                return
            log.info(
                "capture of %s loaded: %s, clock offset %.3f s",
                datetime.fromtimestamp(self.day_start_ns // NS_PER_S, tz=UTC).date(),
                ", ".join(sorted(self.symbols)),
                self.offset_ns / NS_PER_S,
            )


def _file_stamp(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_mtime_ns, status.st_size


ParsedDay = tuple[int, dict[str, CapturedSymbol], list[ReplayEvent], list[int]]


@functools.lru_cache(maxsize=4)
def _parse_day(stamps: tuple[tuple[Path, str, int, int], ...]) -> ParsedDay:
    """A day's files parsed once per process (keyed by path, modification time and size): exchanges
    restarted in one process (tests, drills) share the read-only result instead of parsing again."""
    contents = [read_lines(path) for path, *_ in stamps]
    offset = clock_offset_ns(contents)
    symbols = {
        symbol: CapturedSymbol(symbol, lines, offset)
        for (_, symbol, *_), lines in zip(stamps, contents, strict=True)
        if lines
    }
    events = [event for captured in symbols.values() for event in captured.events()]
    events.sort(key=lambda event: event.at_ns)  # stable: a symbol's own order is kept on ties
    return offset, symbols, events, [event.at_ns for event in events]


class Capture:
    """Every capture day of a directory; each is loaded when the replay first reaches it."""

    def __init__(self, directory: Path, symbols: list[str]) -> None:
        if not directory.is_dir():
            raise FileNotFoundError(f"capture directory {directory} does not exist")
        files = discover(directory, symbols)
        if not files:
            raise FileNotFoundError(
                f"{directory} holds no <symbol>_<YYYYMMDD>.gz capture files of the data's symbols"
            )
        self.directory = directory
        by_day: dict[int, list[CaptureFile]] = {}
        for file in files:
            by_day.setdefault(file.day_start_ns, []).append(file)
        self.days = [CaptureDay(start, day_files) for start, day_files in sorted(by_day.items())]

    def symbol_at(self, symbol: str, t_ns: int, load: bool) -> CapturedSymbol | None:
        """The capture of `symbol` that is in reach at t (the latest one that has begun), loading it when
        `load` allows; None when there is none, or it is not loaded and may not be loaded now."""
        chosen: CapturedSymbol | None = None
        for day in self.days:
            if not day.in_reach(t_ns):
                continue
            if not day.loaded:
                if not load:
                    continue
                day.load()
            captured = day.symbols.get(symbol)
            if captured is not None and (chosen is None or captured.start_ns <= t_ns):
                chosen = captured
        return chosen

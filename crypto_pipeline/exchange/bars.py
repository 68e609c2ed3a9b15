"""Recorded bars, loaded lazily per timeframe, answering point-in-time queries by binary search."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from crypto_pipeline.market.timeframes import Timeframe

NS_PER_S = 1_000_000_000

# Alpaca-shaped CSVs (e.g. BTC-USD_HOUR.csv) carry one symbol each; the suffix names the timeframe.
_CSV_SUFFIXES = {"MINUTE": Timeframe.M1, "HOUR": Timeframe.H1, "DAY": Timeframe.D1}


@dataclass(frozen=True)
class SymbolBars:
    """One symbol's bars of one timeframe as column arrays, sorted by open time (ns since epoch, UTC)."""

    duration_ns: int
    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    trade_count: np.ndarray | None
    vwap: np.ndarray | None

    def known_count(self, now_ns: int) -> int:
        """How many bars are complete at `now_ns` (a bar opening at t is known at t + duration)."""
        return int(np.searchsorted(self.ts, now_ns - self.duration_ns, side="right"))

    def index_at_or_after(self, t_ns: int) -> int:
        return int(np.searchsorted(self.ts, t_ns, side="left"))


class BarStore:
    """The recorded bars of one data directory: `bars_<tf>.parquet` files and/or Alpaca-shaped CSVs."""

    def __init__(self, data_dir: Path) -> None:
        if not data_dir.is_dir():
            raise FileNotFoundError(f"market data directory {data_dir} does not exist")
        self.data_dir = data_dir
        self._sources: dict[Timeframe, list[Path]] = {}
        for path in sorted(data_dir.glob("bars_*.parquet")):
            try:
                self._sources.setdefault(Timeframe.parse(path.stem.removeprefix("bars_")), []).append(path)
            except ValueError:
                continue
        for path in sorted(data_dir.glob("*_*.csv")):
            timeframe = _CSV_SUFFIXES.get(path.stem.rsplit("_", 1)[-1].upper())
            if timeframe is not None:
                self._sources.setdefault(timeframe, []).append(path)
        if not self._sources:
            raise FileNotFoundError(
                f"{data_dir} holds no bars_<timeframe>.parquet or Alpaca-shaped CSV files"
            )
        self._loaded: dict[Timeframe, dict[str, SymbolBars]] = {}
        self._lock = threading.Lock()
        self._resampled: dict[tuple[str, int], SymbolBars] = {}
        self._symbols_by_timeframe: dict[Timeframe, frozenset[str]] = {}

    @property
    def timeframes(self) -> list[Timeframe]:
        return sorted(self._sources, key=lambda tf: tf.duration)

    def _scan(self, timeframe: Timeframe) -> pl.LazyFrame:
        frames = []
        for path in self._sources[timeframe]:
            if path.suffix == ".parquet":
                frames.append(pl.scan_parquet(path))
            else:
                frames.append(_scan_alpaca_csv(path))
        return pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]

    def symbols(self, timeframe: Timeframe | None = None) -> list[str]:
        """Symbols of one timeframe, or of the whole directory (only the symbol column is read)."""
        if timeframe is not None:
            if timeframe not in self._sources:
                return []
            if timeframe not in self._symbols_by_timeframe:
                column = self._scan(timeframe).select(pl.col("symbol").unique()).collect()["symbol"]
                self._symbols_by_timeframe[timeframe] = frozenset(column.to_list())
            return sorted(self._symbols_by_timeframe[timeframe])
        return sorted({symbol for tf in self._sources for symbol in self.symbols(tf)})

    def load(self, timeframe: Timeframe) -> dict[str, SymbolBars]:
        """All bars of `timeframe`, per symbol; read once, on first use."""
        with self._lock:
            if timeframe not in self._loaded:
                self._loaded[timeframe] = self._read(timeframe)
            return self._loaded[timeframe]

    def _read(self, timeframe: Timeframe) -> dict[str, SymbolBars]:
        frame = (
            self._scan(timeframe)
            .with_columns(pl.col("timestamp").dt.convert_time_zone("UTC").dt.cast_time_unit("ns"))
            .unique(subset=["symbol", "timestamp"], keep="last")
            .sort("symbol", "timestamp")
            .collect()
        )
        has_n = "trade_count" in frame.columns
        has_vw = "vwap" in frame.columns
        result: dict[str, SymbolBars] = {}
        for (symbol,), part in frame.partition_by("symbol", as_dict=True, maintain_order=True).items():
            result[str(symbol)] = SymbolBars(
                duration_ns=timeframe_ns(timeframe),
                ts=part["timestamp"].dt.epoch("ns").to_numpy(),
                open=part["open"].to_numpy(),
                high=part["high"].to_numpy(),
                low=part["low"].to_numpy(),
                close=part["close"].to_numpy(),
                volume=part["volume"].to_numpy(),
                trade_count=part["trade_count"].to_numpy() if has_n else None,
                vwap=part["vwap"].to_numpy() if has_vw else None,
            )
        return result

    def bars(self, timeframe: Timeframe, symbol: str) -> SymbolBars | None:
        if timeframe not in self._sources:
            return None
        return self.load(timeframe).get(symbol)

    def bars_for_duration(self, symbol: str, duration_ns: int) -> SymbolBars | None:
        """Bars of any duration: recorded when a file has it, else resampled from the coarsest file that
        divides it (cached). None when the symbol has no file fine enough."""
        key = (symbol, duration_ns)
        if key in self._resampled:
            return self._resampled[key]
        for timeframe in reversed(self.timeframes):
            step = timeframe_ns(timeframe)
            if duration_ns % step or symbol not in self.symbols(timeframe):
                continue
            source = self.bars(timeframe, symbol)
            if source is None:
                continue
            found = source if step == duration_ns else resample(source, duration_ns)
            self._resampled[key] = found
            return found
        return None

    def finest(self, symbol: str) -> SymbolBars | None:
        """The finest-grained bars that exist for `symbol`: what quotes, books and fills derive from."""
        for timeframe in self.timeframes:
            if symbol in self.symbols(timeframe):
                return self.bars(timeframe, symbol)
        return None

    def time_range(self) -> tuple[int, int]:
        """First bar open and last bar close over the directory, in ns (only timestamps are read)."""
        firsts, lasts = [], []
        for timeframe in self._sources:
            stats = (
                self._scan(timeframe)
                .select(pl.col("timestamp").min().alias("first"), pl.col("timestamp").max().alias("last"))
                .collect()
            )
            firsts.append(int(stats["first"].dt.epoch("ns")[0]))
            lasts.append(
                int(stats["last"].dt.epoch("ns")[0]) + int(timeframe.duration.total_seconds()) * NS_PER_S
            )
        return min(firsts), max(lasts)


def timeframe_ns(timeframe: Timeframe) -> int:
    return int(timeframe.duration.total_seconds()) * NS_PER_S


def resample(bars: SymbolBars, duration_ns: int) -> SymbolBars:
    """Aggregate to a coarser, epoch-aligned duration (UTC midnight for days): first open, max high,
    min low, last close, summed volume; trade counts summed and VWAP volume-weighted when present."""
    buckets = bars.ts - bars.ts % duration_ns
    starts, first = np.unique(buckets, return_index=True)
    last = np.append(first[1:], len(buckets)) - 1
    volume = np.add.reduceat(bars.volume, first) if len(first) else bars.volume[:0]
    vwap = None
    if bars.vwap is not None and len(first):
        weighted = np.add.reduceat(np.nan_to_num(bars.vwap) * bars.volume, first)
        vwap = np.divide(weighted, volume, out=np.full_like(weighted, np.nan), where=volume > 0)
    empty = not len(first)
    return SymbolBars(
        duration_ns=duration_ns,
        ts=starts,
        open=bars.open[first],
        high=bars.high[:0] if empty else np.maximum.reduceat(bars.high, first),
        low=bars.low[:0] if empty else np.minimum.reduceat(bars.low, first),
        close=bars.close[last] if not empty else bars.close[:0],
        volume=volume,
        trade_count=None
        if bars.trade_count is None or empty
        else np.add.reduceat(np.nan_to_num(bars.trade_count), first),
        vwap=vwap,
    )


def _scan_alpaca_csv(path: Path) -> pl.LazyFrame:
    symbol = path.stem.rsplit("_", 1)[0].replace("-", "/")
    return pl.scan_csv(path).select(
        pl.lit(symbol).alias("symbol"),
        pl.col("timestamp").str.to_datetime(time_zone="UTC"),
        pl.col("open", "high", "low", "close", "volume").cast(pl.Float64),
        pl.col("trade_count").cast(pl.Float64),
        pl.col("vwap").cast(pl.Float64),
    )

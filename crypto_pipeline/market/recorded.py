"""Recorded bars on disk: `bars_<tf>.parquet` folders (Binance downloads, the shared data) and Alpaca-shaped
CSV folders (`<BASE>-<QUOTE>_<MINUTE|HOUR|DAY>.csv`). No alpaca-py here: reading files needs none.

Ranges are half-open: `fetch_bars(..., start, end)` returns bars whose open time t has start <= t < end.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from crypto_pipeline.errors import UserInputError
from crypto_pipeline.market.clean import clean_bars
from crypto_pipeline.market.resample import resample_bars
from crypto_pipeline.market.schema import BAR_SCHEMA, conform_bars, empty_frame
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.timeutil import as_utc

# --- recorded files --------------------------------------------------------------------------------

# Alpaca-shaped exports are one CSV per symbol and span, e.g. BTC-USD_MINUTE.csv.
_CSV_NAME = re.compile(r"^(?P<base>[A-Za-z0-9]+)-(?P<quote>[A-Za-z0-9]+)_(?P<span>MINUTE|HOUR|DAY)\.csv$")
_CSV_SPANS = {"MINUTE": Timeframe.M1, "HOUR": Timeframe.H1, "DAY": Timeframe.D1}
_PARQUET_NAME = re.compile(r"^bars_(?P<tf>[0-9]+[a-z]+)\.parquet$")


@dataclass(frozen=True)
class RecordedFile:
    """One recorded file: a `bars_<tf>.parquet` of many symbols (`symbol` None) or one symbol's CSV."""

    path: Path
    timeframe: Timeframe
    symbol: str | None = None


def parse_recorded_name(name: str) -> tuple[Timeframe, str | None] | None:
    """The one reading of the recorded-file naming: `bars_<tf>.parquet` -> (tf, None),
    `<BASE>-<QUOTE>_<MINUTE|HOUR|DAY>.csv` -> (tf, "BASE/QUOTE"), anything else (including a
    timeframe we do not model, e.g. bars_1w.parquet) -> None."""
    if match := _PARQUET_NAME.match(name):
        try:
            return Timeframe.parse(match["tf"]), None
        except ValueError:
            return None
    if match := _CSV_NAME.match(name):
        return _CSV_SPANS[match["span"]], f"{match['base'].upper()}/{match['quote'].upper()}"
    return None


def recorded_files(data_dir: Path | str) -> list[RecordedFile]:
    """The recorded bar files of a directory, sorted by name."""
    found = []
    for path in sorted(Path(data_dir).expanduser().iterdir()):
        parsed = parse_recorded_name(path.name)
        if parsed is not None:
            found.append(RecordedFile(path, *parsed))
    return found


class RecordedSource:
    """Bars recorded on disk: `bars_<tf>.parquet` files (columns symbol, timestamp, OHLCV, optionally
    trade_count and vwap), and/or Alpaca-shaped CSVs named `<BASE>-<QUOTE>_<MINUTE|HOUR|DAY>.csv`
    (columns timestamp, OHLCV, trade_count, vwap; the symbol is `BASE/QUOTE`).

    Parquet is scanned lazily with the symbol and time filters pushed down to row groups.
    """

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir).expanduser()
        if not self.data_dir.is_dir():
            raise UserInputError(f"recorded data directory {self.data_dir} does not exist")
        self._parquet: dict[Timeframe, Path] = {}
        self._csv: dict[Timeframe, dict[str, Path]] = {}
        for file in recorded_files(self.data_dir):
            if file.symbol is None:
                self._parquet[file.timeframe] = file.path
            else:
                self._csv.setdefault(file.timeframe, {})[file.symbol] = file.path
        if not self._parquet and not self._csv:
            raise UserInputError(
                f"no recorded bars in {self.data_dir}: expected bars_<timeframe>.parquet files "
                "or <BASE>-<QUOTE>_<MINUTE|HOUR|DAY>.csv files"
            )
        self._symbol_cache: dict[Timeframe, list[str]] = {}

    @property
    def name(self) -> str:
        return "recorded"

    @property
    def description(self) -> str:
        return f"recorded data in {self.data_dir}"

    @property
    def symbols_per_request(self) -> int | None:
        return None  # one scan for all symbols: per-symbol scans re-read shared row groups

    def timeframes(self) -> list[Timeframe]:
        """Timeframes with recorded bars, finest first."""
        return sorted({*self._parquet, *self._csv}, key=lambda tf: tf.duration)

    def _require(self, timeframe: Timeframe) -> None:
        if timeframe not in self._parquet and timeframe not in self._csv:
            available = ", ".join(tf.value for tf in self.timeframes())
            raise UserInputError(
                f"no {timeframe.value} bars in {self.data_dir}; recorded timeframes there: {available}"
            )

    def symbols(self, timeframe: Timeframe | None = None) -> list[str]:
        timeframes = [timeframe] if timeframe is not None else self.timeframes()
        found: set[str] = set()
        for tf in timeframes:
            self._require(tf)
            if tf not in self._symbol_cache:
                names = set(self._csv.get(tf, {}))
                if tf in self._parquet:
                    column = pl.scan_parquet(self._parquet[tf]).select(pl.col("symbol").unique()).collect()
                    names.update(column.get_column("symbol").drop_nulls().to_list())
                self._symbol_cache[tf] = sorted(names)
            found.update(self._symbol_cache[tf])
        return sorted(found)

    def unknown_symbols(self, symbols: Sequence[str], timeframe: Timeframe) -> list[str]:
        known = set(self.symbols(timeframe))
        return [s for s in symbols if s not in known]

    def fetch_bars(
        self, symbols: Sequence[str], timeframe: Timeframe, start: datetime, end: datetime
    ) -> pl.DataFrame:
        timeframe = Timeframe.parse(timeframe)
        self._require(timeframe)
        start, end = as_utc(start), as_utc(end)
        frames: list[pl.DataFrame] = []
        wanted = list(symbols)
        if timeframe in self._parquet and wanted:
            lazy = pl.scan_parquet(self._parquet[timeframe]).filter(
                pl.col("symbol").is_in(wanted) & (pl.col("timestamp") >= start) & (pl.col("timestamp") < end)
            )
            frames.append(conform_bars(lazy.collect()))
        for symbol, path in self._csv.get(timeframe, {}).items():
            if symbol not in wanted:
                continue
            # Timestamps stay text until conform_bars parses them, so a malformed one becomes null
            # (quarantined later) instead of failing the whole file.
            raw = pl.read_csv(path, schema_overrides={"timestamp": pl.Utf8}, infer_schema_length=10_000)
            bars = conform_bars(raw, symbol=symbol)
            in_range = (pl.col("timestamp") >= start) & (pl.col("timestamp") < end)
            frames.append(bars.filter(in_range | pl.col("timestamp").is_null()))
        if not frames:
            return empty_frame(BAR_SCHEMA)
        return pl.concat(frames, how="vertical")


# --- a folder as a backtest reads it: any recorded timeframe, coarser ones derived -------------------


def _held(source: RecordedSource, timeframe: Timeframe, symbols: Sequence[str] | None = None) -> str:
    """What `source` holds at `timeframe` (for `symbols` when given), in words: symbols and time range."""
    frames = []
    if timeframe in source._parquet:
        lazy = pl.scan_parquet(source._parquet[timeframe])
        if symbols:
            lazy = lazy.filter(pl.col("symbol").is_in(list(symbols)))
        frames.append(
            lazy.select(
                pl.col("symbol").n_unique().alias("n"),
                pl.col("timestamp").cast(pl.Datetime("us", "UTC")).min().alias("first"),
                pl.col("timestamp").cast(pl.Datetime("us", "UTC")).max().alias("last"),
            ).collect()
        )
    for symbol, path in source._csv.get(timeframe, {}).items():
        if symbols and symbol not in symbols:
            continue
        bars = conform_bars(pl.read_csv(path, schema_overrides={"timestamp": pl.Utf8}), symbol=symbol)
        frames.append(
            bars.select(
                pl.lit(1, pl.UInt32).alias("n"),
                pl.col("timestamp").min().alias("first"),
                pl.col("timestamp").max().alias("last"),
            )
        )
    held = pl.concat(frames, how="vertical_relaxed").drop_nulls() if frames else pl.DataFrame()
    if held.is_empty():
        return f"no {timeframe.value} bars" + (f" of {list(symbols)}" if symbols else "")
    first, last = held["first"].min(), held["last"].max()
    whose = f"{list(symbols)}" if symbols else f"{int(held['n'].sum())} symbol(s)"
    return f"{timeframe.value} bars of {whose} from {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} (bar open, UTC)"


def derivable_from(source: RecordedSource, timeframe: Timeframe) -> Timeframe | None:
    """The recorded timeframe `timeframe` is read from: itself when recorded, else the coarsest recorded one
    finer than it that divides it, as the warehouse chains its resampling (an Alpaca folder's few days of
    1m bars do not hide its year of 1h bars). None: it cannot be made from this folder."""
    recorded = source.timeframes()
    if timeframe in recorded:
        return timeframe
    finer = [
        tf for tf in recorded if tf.duration < timeframe.duration and not timeframe.duration % tf.duration
    ]
    return finer[-1] if finer else None


def folder_bars(
    data_dir: Path | str | RecordedSource,
    symbols: Sequence[str],
    timeframe: str | Timeframe,
    start: datetime | str,
    end: datetime | str,
) -> pl.DataFrame:
    """Clean bars of `symbols` with open times in [start, end) from a recorded folder (`bars_<tf>.parquet`
    or Alpaca-shaped CSVs, as `ingest` reads them), sorted by symbol and time, columns `BAR_SCHEMA`.

    A timeframe the folder lacks is derived from a finer recorded one that divides it (`derivable_from`), by the
    warehouse's own resampling (`market.resample.resample_bars`): complete periods only, periods aligned
    to the UTC epoch grid (UTC days for 1d). Rows that fail the warehouse's cleaning (`clean_bars`) are
    left out. Errors are `UserInputError`s naming the folder, the symbols and the range the folder holds.
    """
    tf = Timeframe.parse(timeframe)
    first, last = as_utc(start), as_utc(end)
    if first >= last:
        raise UserInputError(f"start {first:%Y-%m-%d %H:%M} must be before end {last:%Y-%m-%d %H:%M}")
    if not symbols:
        raise UserInputError("no symbols given")
    source = data_dir if isinstance(data_dir, RecordedSource) else RecordedSource(data_dir)
    folder = source.data_dir
    recorded = ", ".join(t.value for t in source.timeframes())
    base = derivable_from(source, tf)
    if base is None:
        raise UserInputError(
            f"no {tf.value} bars in {folder}, and none can be derived: it holds {recorded}; a missing "
            f"timeframe is resampled from a finer recorded one that divides it (e.g. 1h -> 4h, 1d)"
        )
    known = set(source.symbols(base))
    unknown = [s for s in symbols if s not in known]
    if unknown:
        raise UserInputError(
            f"unknown symbol(s) {unknown} in {folder} ({base.value} bars of {len(known)} symbol(s), "
            f"e.g. {sorted(known)[:5]})"
        )
    # A derived period is emitted only when complete: read from the start of the period holding `first`.
    step = int(tf.duration.total_seconds() * 1_000_000)
    aligned = datetime.fromtimestamp((int(first.timestamp() * 1_000_000) // step * step) / 1_000_000, UTC)
    raw = source.fetch_bars(symbols, base, aligned if base is not tf else first, last)
    clean = clean_bars(raw, timeframe=base, known_symbols=symbols, now=datetime.now(UTC)).clean
    if base is not tf and clean.height:
        clean = resample_bars(clean, base, tf)
    bars = (
        clean.select(BAR_SCHEMA.names())
        .filter((pl.col("timestamp") >= first) & (pl.col("timestamp") < last))
        .sort("symbol", "timestamp")
    )
    if bars.height == 0:
        derived = "" if base is tf else f" (derived from {base.value})"
        raise UserInputError(
            f"no {tf.value} bars{derived} for {list(symbols)} in [{first:%Y-%m-%d %H:%M}, {last:%Y-%m-%d %H:%M}) "
            f"in {folder}: it holds {_held(source, base, symbols)}"
        )
    return bars

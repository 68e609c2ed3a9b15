"""Ingestion: a source's bars into `raw_bars`, then `raw_bars` into clean, resampled `bars`.

Both steps are idempotent and work by UTC day partitions, which is what the Dagster layer
materializes (`raw_bars` and `bars` assets, one partition per day):

    ingest_raw(source, warehouse, symbols, "5m", day, day)            # raw_bars + quarantine(stage=raw)
    build_bars(warehouse, symbols, "5m", ["15m", "1h", "4h", "1d"], day, day)  # bars + quarantine(stage=bars)

Ranges: `date`s (or "YYYY-MM-DD" strings) mean whole UTC days with the end day included;
`datetime`s (or ISO strings with a time) are exact bounds, start included, end excluded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from crypto_pipeline.errors import UserInputError
from crypto_pipeline.market.clean import clean_bars, flag_gaps, screen_raw
from crypto_pipeline.market.resample import resample_bars
from crypto_pipeline.market.schema import BAR_SCHEMA, TIMESTAMP_DTYPE
from crypto_pipeline.market.sources import BarSource
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.timeutil import as_utc, day_range
from crypto_pipeline.warehouse import PARTITION_DATE, Warehouse, WriteReport

DateLike = date | datetime | str
DAY = timedelta(days=1)
# Rows held in memory per step; the 2024 5m set (1.6M rows) fits in one chunk.
DEFAULT_CHUNK_ROWS = 5_000_000


# --- user input ------------------------------------------------------------------------------------


def parse_timeframe(value: str | Timeframe) -> Timeframe:
    try:
        return Timeframe.parse(value)
    except ValueError as error:
        raise UserInputError(str(error)) from None


# The one reading of a user's range (days included, datetimes exact): `timeutil.day_range`.
resolve_range = day_range


def normalize_symbols(symbols: Sequence[str] | str) -> list[str]:
    """Upper-cased, stripped, de-duplicated symbols from a list or a comma-separated string."""
    items = (
        symbols.split(",") if isinstance(symbols, str) else [p for s in symbols for p in str(s).split(",")]
    )
    cleaned = list(dict.fromkeys(s.strip().upper() for s in items if s.strip()))
    if not cleaned:
        raise UserInputError("no symbols given: pass at least one, e.g. BTC/USDT")
    return cleaned


def _check_symbols(source: BarSource, symbols: list[str], timeframe: Timeframe) -> None:
    unknown = source.unknown_symbols(symbols, timeframe)
    if unknown:
        try:
            known = source.symbols(timeframe)
        except UserInputError:
            known = []
        hint = f"; known: {', '.join(known[:12])}{', ...' if len(known) > 12 else ''}" if known else ""
        raise UserInputError(
            f"unknown symbol(s) {', '.join(unknown)} for {source.description} ({timeframe.value}){hint}"
        )


def _chunks(lo: datetime, hi: datetime, days_per_chunk: int) -> list[tuple[datetime, datetime]]:
    """[lo, hi) cut at UTC midnights into pieces of at most `days_per_chunk` days."""
    out: list[tuple[datetime, datetime]] = []
    cursor = lo
    while cursor < hi:
        midnight = datetime.combine(cursor.date(), datetime.min.time(), UTC)
        stop = min(hi, midnight + days_per_chunk * DAY)
        out.append((cursor, stop))
        cursor = stop
    return out


def _days_per_chunk(timeframe: Timeframe, n_symbols: int, max_rows: int) -> int:
    return max(1, max_rows // (max(1, n_symbols) * timeframe.bars_per(DAY)))


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
    with progress:
        yield progress


def _advance(progress: Progress, task: int) -> Callable[[int], None]:
    return lambda n: progress.advance(task, n)


def _merge_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    for reason, n in counts.items():
        into[reason] = into.get(reason, 0) + n


# --- raw ingestion ---------------------------------------------------------------------------------


@dataclass
class IngestReport:
    source: str
    timeframe: str
    symbols: list[str]
    start: datetime
    end: datetime
    rows_fetched: int = 0
    rows_stored: int = 0  # rows accepted into raw_bars (new, changed or identical)
    partitions_written: int = 0
    partitions_unchanged: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)  # by reason
    out_of_order: int = 0  # rows that arrived out of time order (kept, re-sorted)
    empty_symbols: list[str] = field(default_factory=list)  # symbols the source had no bars for
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"{self.source}: {self.rows_fetched:,} {self.timeframe} bars fetched for {len(self.symbols)} symbol(s) "
            f"from {self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC in {self.seconds:.1f} s",
            f"raw_bars: {self.rows_stored:,} rows stored, {self.partitions_written} partition(s) written, "
            f"{self.partitions_unchanged} unchanged",
        ]
        if self.quarantined:
            lines.append(
                "quarantined: " + ", ".join(f"{r} {n:,}" for r, n in sorted(self.quarantined.items()))
            )
        if self.out_of_order:
            lines.append(f"{self.out_of_order:,} row(s) arrived out of time order (kept, re-sorted)")
        if self.empty_symbols:
            lines.append(f"no bars in this range for: {', '.join(self.empty_symbols)}")
        return "\n".join(lines)


def ingest_raw(
    source: BarSource,
    warehouse: Warehouse,
    symbols: Sequence[str] | str,
    timeframe: str | Timeframe,
    start: DateLike,
    end: DateLike,
    *,
    progress: bool = True,
    max_chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ingested_at: datetime | None = None,
) -> IngestReport:
    """Fetch bars from `source` into `raw_bars`, one day partition at a time, and report.

    User input is checked first, with one clear `UserInputError`: the timeframe, the range
    (start before end) and the symbols (known to the source). Rows a raw store cannot hold (no
    timestamp, a symbol that was not asked for, outside the range, an earlier duplicate of the same
    key) go to `quarantine` with stage "raw"; everything else is stored as sent (values are judged by
    `build_bars`). Re-running the same range changes nothing; newer data for a bar replaces the old.
    A range with no bars is not an error: the report lists the symbols that had none.
    DuckDB views are refreshed by `build_bars` (or `Warehouse.refresh_views()`), not here.
    """
    started = time.perf_counter()
    tf = parse_timeframe(timeframe)
    wanted = normalize_symbols(symbols)
    lo, hi = resolve_range(start, end)
    _check_symbols(source, wanted, tf)
    stamp = as_utc(ingested_at) if ingested_at is not None else datetime.now(UTC)

    report = IngestReport(source=source.description, timeframe=tf.value, symbols=wanted, start=lo, end=hi)
    rows_per_symbol = dict.fromkeys(wanted, 0)
    chunks = _chunks(lo, hi, _days_per_chunk(tf, len(wanted), max_chunk_rows))
    per_request = getattr(source, "symbols_per_request", 1) or len(wanted)
    groups = [wanted[i : i + per_request] for i in range(0, len(wanted), per_request)]
    with _progress(progress) as bar:
        fetch_task = bar.add_task(f"fetch {tf.value} bars", total=len(chunks) * len(wanted))
        write_task = bar.add_task("write raw_bars", total=len(_chunks(lo, hi, 1)))
        for chunk_lo, chunk_hi in chunks:
            frames = []
            for group in groups:
                label = group[0] if len(group) == 1 else f"{len(group)} symbols"
                bar.update(fetch_task, description=f"fetch {tf.value} {label} from {chunk_lo:%Y-%m-%d}")
                frame = source.fetch_bars(group, tf, chunk_lo, chunk_hi)
                for symbol, n in frame.group_by("symbol").len().iter_rows():
                    if symbol in rows_per_symbol:
                        rows_per_symbol[symbol] += n
                frames.append(frame)
                bar.advance(fetch_task, len(group))
            batch = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=BAR_SCHEMA)
            report.rows_fetched += batch.height

            screened = screen_raw(batch, timeframe=tf, known_symbols=wanted, window=(chunk_lo, chunk_hi))
            report.out_of_order += screened.out_of_order
            _merge_counts(report.quarantined, screened.reasons)
            written = warehouse.upsert(
                "raw_bars", screened.clean, ingested_at=stamp, progress=_advance(bar, write_task)
            )
            report.rows_stored += screened.clean.height
            report.partitions_written += len(written.written)
            report.partitions_unchanged += written.unchanged
            _store_quarantine(warehouse, screened.quarantine, wanted, tf, chunk_lo, chunk_hi, stage="raw")
        bar.update(write_task, completed=bar.tasks[write_task].total)
    report.empty_symbols = [s for s, n in rows_per_symbol.items() if n == 0]
    report.seconds = time.perf_counter() - started
    return report


def _store_quarantine(
    warehouse: Warehouse,
    rows: pl.DataFrame,
    symbols: list[str],
    timeframe: Timeframe,
    lo: datetime,
    hi: datetime,
    *,
    stage: str,
) -> WriteReport:
    """Make the quarantine of this stage, symbols and range exactly `rows` (re-runs do not pile up)."""
    ts = pl.col("timestamp")
    in_range = (ts >= lo) & (ts < hi)
    # Rows without a timestamp, or outside the range, are filed under the range's first day.
    rows = rows.with_columns(pl.when(in_range).then(None).otherwise(pl.lit(lo.date())).alias(PARTITION_DATE))
    scope_symbols = sorted({*symbols, *rows.get_column("symbol").drop_nulls().to_list()})
    in_range = in_range | ts.is_null() | (pl.col("reason") == "out_of_range")
    return warehouse.replace(
        "quarantine",
        rows,
        symbols=scope_symbols,
        timeframes=[timeframe.value],
        first_day=lo.date(),
        last_day=(hi - timedelta(microseconds=1)).date(),
        scope=(pl.col("stage") == stage) & in_range,
    )


# --- bars ------------------------------------------------------------------------------------------


@dataclass
class BuildReport:
    symbols: list[str]
    base_timeframe: str
    first_day: date
    last_day: date
    rows: dict[str, int] = field(default_factory=dict)  # bars per timeframe in the range, after the build
    quarantined: dict[str, int] = field(default_factory=dict)  # by reason
    partitions_written: int = 0
    partitions_unchanged: int = 0
    partitions_deleted: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        rows = ", ".join(f"{tf} {n:,}" for tf, n in self.rows.items())
        lines = [
            f"bars {self.first_day}..{self.last_day} for {len(self.symbols)} symbol(s) in {self.seconds:.1f} s: {rows}",
            f"{self.partitions_written} partition(s) written, {self.partitions_unchanged} unchanged, "
            f"{self.partitions_deleted} removed",
        ]
        if self.quarantined:
            lines.append(
                "quarantined: " + ", ".join(f"{r} {n:,}" for r, n in sorted(self.quarantined.items()))
            )
        return "\n".join(lines)


def _check_targets(base: Timeframe, targets: Sequence[str | Timeframe]) -> list[Timeframe]:
    parsed = sorted({parse_timeframe(t) for t in targets} - {base}, key=lambda tf: tf.duration)
    for tf in parsed:
        if tf.duration <= base.duration or tf.duration % base.duration:
            raise UserInputError(
                f"cannot build {tf.value} bars from {base.value} bars: a target timeframe must be a whole "
                f"multiple of the base timeframe"
            )
    return parsed


def _horizons(raw: pl.DataFrame, base: Timeframe, now: datetime) -> dict[str, datetime]:
    """Per symbol, how far the source's data reaches (close of its newest bar, capped at `now`).

    Any raw bar counts, even one that fails cleaning: it proves the source has moved past the
    periods before it, so those periods are over (with bars missing, if so)."""
    if raw.is_empty():
        return {}
    reach = (
        raw.filter(pl.col("timestamp").is_not_null())
        .group_by("symbol")
        .agg((pl.col("timestamp").max() + base.duration).alias("reach"))
        .with_columns(pl.min_horizontal("reach", pl.lit(now, TIMESTAMP_DTYPE)).alias("reach"))
    )
    return dict(zip(reach["symbol"].to_list(), reach["reach"].to_list(), strict=True))


def derive_bars(
    clean: pl.DataFrame,
    base: Timeframe,
    targets: Sequence[Timeframe],
    complete_until: dict[str, datetime] | datetime | None = None,
) -> dict[Timeframe, pl.DataFrame]:
    """Clean base bars -> `bars` rows for the base and every target timeframe (with `bar_count` and
    `gap_before`). Coarser timeframes are chained from the finest one that divides them, which gives
    the same values as aggregating the base bars directly, for a fraction of the work."""
    base_rows = clean.with_columns(
        pl.lit(base.value).alias("timeframe"), pl.lit(1, pl.Int32).alias("bar_count")
    )
    built: dict[Timeframe, pl.DataFrame] = {base: base_rows}
    for tf in targets:
        source_tf = max(
            (have for have in built if not tf.duration % have.duration and have.duration < tf.duration),
            key=lambda have: have.duration,
        )
        built[tf] = resample_bars(built[source_tf], source_tf, tf, complete_until=complete_until)
    return {tf: flag_gaps(frame, tf) for tf, frame in built.items()}


def build_bars(
    warehouse: Warehouse,
    symbols: Sequence[str] | str,
    base_timeframe: str | Timeframe,
    target_timeframes: Sequence[str | Timeframe],
    start: DateLike,
    end: DateLike,
    *,
    now: datetime | None = None,
    progress: bool = True,
    max_chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> BuildReport:
    """Rebuild `bars` (base timeframe + resampled targets) for whole UTC days from `raw_bars`.

    Per day: clean the raw bars (bad ones to `quarantine`, stage "bars"), flag gaps, resample,
    and replace that day's partitions for these symbols. One day of raw bars on each side is read
    as context: the day before so the first bar's `gap_before` is right, the day after to know
    whether the day's last periods are over. Bars not closed by `now` (default: the current time)
    are quarantined as `future`. Re-running with the same inputs rewrites nothing.
    """
    started = time.perf_counter()
    base = parse_timeframe(base_timeframe)
    targets = _check_targets(base, target_timeframes)
    wanted = normalize_symbols(symbols)
    lo, hi = resolve_range(start, end)
    first_day, last_day = lo.date(), (hi - timedelta(microseconds=1)).date()
    now = as_utc(now) if now is not None else datetime.now(UTC)
    timeframes = [base, *targets]

    report = BuildReport(symbols=wanted, base_timeframe=base.value, first_day=first_day, last_day=last_day)
    report.rows = {tf.value: 0 for tf in timeframes}
    day_lo = datetime.combine(first_day, datetime.min.time(), UTC)
    day_hi = datetime.combine(last_day, datetime.min.time(), UTC) + DAY
    chunks = _chunks(day_lo, day_hi, _days_per_chunk(base, len(wanted), max_chunk_rows))
    with _progress(progress) as bar:
        task = bar.add_task(
            f"build bars {'/'.join(tf.value for tf in timeframes)}", total=(day_hi - day_lo).days
        )
        for chunk_lo, chunk_hi in chunks:
            raw = warehouse.read("raw_bars", wanted, [base.value], start=chunk_lo - DAY, end=chunk_hi + DAY)
            context = raw.filter(pl.col("timestamp") < chunk_hi)
            result = clean_bars(context, timeframe=base, known_symbols=wanted, now=now)
            derived = derive_bars(result.clean, base, targets, complete_until=_horizons(raw, base, now))

            in_chunk = (pl.col("timestamp") >= chunk_lo) & (pl.col("timestamp") < chunk_hi)
            rows = pl.concat([frame.filter(in_chunk) for frame in derived.values()], how="diagonal_relaxed")
            written = warehouse.replace(
                "bars",
                rows,
                symbols=wanted,
                timeframes=[tf.value for tf in timeframes],
                first_day=chunk_lo.date(),
                last_day=(chunk_hi - DAY).date(),
            )
            quarantine = result.quarantine.filter(in_chunk)
            stored = _store_quarantine(warehouse, quarantine, wanted, base, chunk_lo, chunk_hi, stage="bars")
            for tf, frame in derived.items():
                report.rows[tf.value] += frame.filter(in_chunk).height
            _merge_counts(report.quarantined, _reason_counts(quarantine))
            for part in (written, stored):
                report.partitions_written += len(part.written)
                report.partitions_unchanged += part.unchanged
                report.partitions_deleted += len(part.deleted)
            bar.advance(task, (chunk_hi - chunk_lo).days)
    warehouse.refresh_views()
    report.seconds = time.perf_counter() - started
    return report


def _reason_counts(quarantine: pl.DataFrame) -> dict[str, int]:
    if quarantine.is_empty():
        return {}
    counts = quarantine.group_by("reason").len()
    return dict(zip(counts["reason"].to_list(), counts["len"].to_list(), strict=True))

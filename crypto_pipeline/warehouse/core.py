"""The `Warehouse`: write, read and view the tables of the registry under one root directory."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl

from crypto_pipeline.market.clean import gap_report, is_sorted_by_symbol_time
from crypto_pipeline.market.schema import INGESTED_AT, KEY_COLUMNS, TIMESTAMP_DTYPE
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.warehouse.layout import has_data, list_partitions
from crypto_pipeline.warehouse.layout import partition_path as _partition_path
from crypto_pipeline.warehouse.tables import Partitioning, TableSpec, registered_tables, table_spec
from crypto_pipeline.warehouse.views import view_sql
from crypto_pipeline.warehouse.write import (
    PARTITION_DATE,
    Job,
    Merge,
    WriteReport,
    append_merge,
    prepare,
    replace_merge,
    run_jobs,
    split,
    upsert_merge,
    utc,
)

log = logging.getLogger(__name__)
_WRITE_LOCKS: dict[Path, threading.RLock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(table_dir: Path) -> threading.RLock:
    """The one lock of a table folder in this process, whichever `Warehouse` object writes it."""
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(Path(table_dir).resolve(), threading.RLock())


_DURATIONS = {tf.value: tf.duration for tf in Timeframe}
_WIDENING = pl.ScanCastOptions(integer_cast=["upcast", "allow-float"], float_cast="upcast")
_STAGE_TABLES = {"raw": "raw_bars", "bars": "bars"}


class Warehouse:
    """DuckDB + hive-partitioned Parquet under `root` (see the package docstring for the guarantees)."""

    def __init__(self, root: Path | str, *, max_workers: int | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        # Parquet encoding releases the GIL, so threads overlap encoding with file I/O; on 2 cores
        # 8 threads wrote the 2024 set's 250 day files ~1.5x faster than 1.
        self.max_workers = max_workers or min(8, 4 * (os.cpu_count() or 1))
        # After a refresh another process kept from us (it holds the DuckDB file), writes do not try
        # again before this monotonic time: a live loop flushes often (see `keep_views_current`).
        self._views_retry_at = 0.0

    # --- layout --------------------------------------------------------------------------------

    @staticmethod
    def spec(table: str) -> TableSpec:
        """What the warehouse knows of `table` (see `crypto_pipeline.warehouse.tables`)."""
        return table_spec(table)

    @property
    def duckdb_path(self) -> Path:
        return self.root / "warehouse.duckdb"

    def table_dir(self, table: str) -> Path:
        if not table.isidentifier():
            raise ValueError(f"table names are identifiers, got {table!r}")
        return self.root / table

    def partition_path(self, table: str, timeframe: str | None, day: date | None) -> Path:
        return _partition_path(self.table_dir(table), table_spec(table), timeframe, day)

    def partitions(
        self,
        table: str,
        *,
        timeframes: Iterable[str] | None = None,
        first_day: date | None = None,
        last_day: date | None = None,
    ) -> list[tuple[str | None, date | None, Path]]:
        """Existing partitions (timeframe, day, file), sorted by timeframe then day; levels the table
        is not partitioned by are None."""
        return list_partitions(
            self.table_dir(table),
            table_spec(table),
            timeframes=timeframes,
            first_day=first_day,
            last_day=last_day,
        )

    # --- writing -------------------------------------------------------------------------------

    def _run(
        self, spec: TableSpec, jobs: list[Job], merge: Merge, progress: Callable[[int], None] | None
    ) -> WriteReport:
        base = self.table_dir(spec.name)
        # A partition is read, merged and rewritten: two threads of one process writing the same table
        # (a live session and its shadow books, the MCP server's tool threads) take turns.
        with _write_lock(base):
            return run_jobs(
                spec.name,
                jobs,
                lambda job: _partition_path(base, spec, job.timeframe, job.day),
                base,
                merge,
                progress,
                self.max_workers,
            )

    def upsert(
        self,
        table: str,
        df: pl.DataFrame,
        *,
        ingested_at: datetime | None = None,
        progress: Callable[[int], None] | None = None,
        views: bool = True,
    ) -> WriteReport:
        """Write rows into `table`, rewriting only the partitions they fall in.

        Raw tables merge: on a key collision the new row wins (and among the given rows, the last one),
        except append-only tables (the journal), where the stored row stands. Derived tables replace:
        in each partition the rows touch, the stored rows of the given symbols become exactly the given
        rows, so a rebuild drops rows it no longer produces (use `replace` to also clear partitions
        where it produced nothing). Rows without the stamp column (`_ingested_at`) get `ingested_at`
        (default: now). `progress(n)` is called as partitions finish. The table's DuckDB view is left
        current (`keep_views_current`); `views=False` leaves that to the caller (one refresh after
        writing several tables).
        """
        spec = table_spec(table)
        prepared = prepare(spec, df, ingested_at)
        merge: Merge
        if spec.derived:
            covered = pl.lit(True)
            if "symbol" in prepared.columns:
                covered = pl.col("symbol").is_in(prepared.get_column("symbol").unique().to_list())
            merge = replace_merge(spec, covered, prepared.drop(PARTITION_DATE).schema)
        elif spec.append_only:
            merge = append_merge(spec)
        else:
            # One check of the whole batch instead of one per partition: a partition's rows keep their order.
            presorted = spec.key == KEY_COLUMNS and is_sorted_by_symbol_time(prepared)
            merge = upsert_merge(spec, presorted)
        jobs = [Job(tf, day, prepared, rows) for (tf, day), rows in split(spec, prepared).items()]
        report = self._run(spec, jobs, merge, progress)
        report.rows_given = df.height
        if views:
            self.keep_views_current(table)
        return report

    def replace(
        self,
        table: str,
        df: pl.DataFrame,
        *,
        symbols: Sequence[str] | None,
        timeframes: Sequence[str] | None,
        first_day: date | None,
        last_day: date | None,
        scope: pl.Expr | None = None,
        ingested_at: datetime | None = None,
        progress: Callable[[int], None] | None = None,
        views: bool = True,
    ) -> WriteReport:
        """Make the rows of `symbols` x `timeframes` x days [first_day, last_day] (and matching `scope`,
        e.g. `pl.col("stage") == "bars"`) exactly `df`: stored rows in that scope that `df` lacks are
        removed, others are upserted. Rows of other symbols in the same partitions are untouched.
        None for `symbols`, `timeframes` or a day means no limit on that side. The DuckDB view is left
        current as by `upsert`."""
        spec = table_spec(table)
        by_timeframe = spec.partitioning is Partitioning.TIMEFRAME_DAY
        tfs = [Timeframe.parse(tf).value for tf in timeframes] if timeframes is not None else None
        prepared = prepare(spec, df, ingested_at)
        outside: list[pl.Expr] = []
        if tfs is not None and by_timeframe:
            outside.append(~pl.col("timeframe").is_in(tfs))
        if symbols is not None:
            outside.append(~pl.col("symbol").is_in(list(symbols)))
        if first_day is not None and spec.partitioning is not Partitioning.NONE:
            outside.append(pl.col(PARTITION_DATE) < first_day)
        if last_day is not None and spec.partitioning is not Partitioning.NONE:
            outside.append(pl.col(PARTITION_DATE) > last_day)
        if outside:
            n_outside = prepared.filter(pl.any_horizontal(outside)).height
            if n_outside:
                raise ValueError(f"{n_outside} row(s) fall outside the scope being replaced in {table!r}")
        in_scope = pl.col("symbol").is_in(list(symbols)) if symbols is not None else pl.lit(True)
        if tfs is not None and not by_timeframe and "timeframe" in prepared.columns:
            in_scope = in_scope & pl.col("timeframe").is_in(tfs)
        if scope is not None:
            in_scope = in_scope & scope
        merge = replace_merge(spec, in_scope, prepared.drop(PARTITION_DATE).schema)
        parts = split(spec, prepared)
        existing = {
            (tf, day)
            for tf, day, _ in self.partitions(
                table, timeframes=tfs if by_timeframe else None, first_day=first_day, last_day=last_day
            )
        }
        jobs = [
            Job(tf, day, prepared, parts.get((tf, day)))
            for tf, day in sorted(existing | set(parts), key=lambda p: (p[0] or "", p[1] or date.min))
        ]
        report = self._run(spec, jobs, merge, progress)
        report.rows_given = df.height
        if views:
            self.keep_views_current(table)
        return report

    def append_quarantine(self, df: pl.DataFrame) -> WriteReport:
        """Add rejected rows (QUARANTINE_SCHEMA). The same bad row reported twice is stored once."""
        return self.upsert("quarantine", df)

    # --- reading -------------------------------------------------------------------------------

    def _files(
        self,
        table: str,
        timeframes: Iterable[str] | None,
        start: datetime | None,
        end: datetime | None,
    ) -> list[str]:
        first_day = utc(start).date() if start is not None else None
        last_day = (utc(end) - timedelta(microseconds=1)).date() if end is not None else None
        return [
            str(p)
            for _, _, p in self.partitions(
                table, timeframes=timeframes, first_day=first_day, last_day=last_day
            )
        ]

    def scan(
        self,
        table: str,
        *,
        timeframes: Iterable[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> pl.LazyFrame:
        """A lazy scan of the partitions that can hold rows of `timeframes` in [start, end)."""
        spec = table_spec(table)
        files = self._files(table, timeframes, start, end)
        if not files:
            return pl.LazyFrame(schema=spec.schema)
        schema = spec.schema
        if spec.open_schema:
            # Open tables gain columns over time: scan with the union of the files' schemas (footers
            # only), ~40% faster than concatenating one scan per file, plus the declared columns.
            schemas = list(dict.fromkeys(tuple(pl.read_parquet_schema(f).items()) for f in files))
            frames = [pl.DataFrame(schema=dict(s)) for s in schemas] + [pl.DataFrame(schema=spec.schema)]
            schema = pl.concat(frames, how="diagonal_relaxed").schema
        return pl.scan_parquet(
            files,
            schema=schema,
            missing_columns="insert",
            extra_columns="ignore",
            hive_partitioning=False,
            # A column written as Int64 one day and Float64 (or all-null) another still lines up.
            cast_options=_WIDENING,
        )

    def read(
        self,
        table: str,
        symbols: Sequence[str] | None = None,
        timeframes: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        as_of: datetime | None = None,
        columns: Sequence[str] | None = None,
    ) -> pl.DataFrame:
        """Rows of `table` with start <= time < end, sorted by (symbol, timeframe, time); the time is
        the spec's `time_column` (`timestamp` for bars).

        `as_of`: only what was knowable then: bars closed by `as_of` (timestamp + duration), other
        rows whose time is at or before it, and only rows whose `_ingested_at` is at or before it.
        """
        spec = table_spec(table)
        time = spec.time_column
        if time is None and (start is not None or end is not None or as_of is not None):
            raise ValueError(f"{table!r} has no time column: read it without start, end or as_of")
        if timeframes is not None:
            timeframes = [Timeframe.parse(tf).value for tf in timeframes]
        bars = time == "timestamp" and "timeframe" in spec.schema
        scan_end = end
        if as_of is not None:
            as_of = utc(as_of)
            if bars:
                end = min(utc(end), as_of) if end is not None else as_of
                scan_end = end
            else:
                limit = as_of + timedelta(microseconds=1)
                scan_end = min(utc(end), limit) if end is not None else limit
        lazy = self.scan(table, timeframes=timeframes, start=start, end=scan_end)
        filters: list[pl.Expr] = []
        if symbols is not None:
            filters.append(pl.col("symbol").is_in(list(symbols)))
        if timeframes is not None:
            filters.append(pl.col("timeframe").is_in(list(timeframes)))
        if start is not None:
            filters.append(pl.col(time) >= utc(start))  # type: ignore[arg-type]
        if end is not None:
            filters.append(pl.col(time) < utc(end))  # type: ignore[arg-type]
        if as_of is not None:
            if bars:
                closes = pl.col("timestamp") + pl.col("timeframe").replace_strict(
                    _DURATIONS, return_dtype=pl.Duration("us")
                )
                filters.append(closes <= as_of)
            else:
                filters.append(pl.col(time) <= as_of)  # type: ignore[arg-type]
            if INGESTED_AT in lazy.collect_schema().names():
                filters.append(pl.col(INGESTED_AT) <= as_of)
        if filters:
            lazy = lazy.filter(pl.all_horizontal(filters))
        if columns is not None:
            lazy = lazy.select(list(columns))
        names = lazy.collect_schema().names()
        order = [c for c in ("symbol", "timeframe", time) if c is not None and c in names]
        order = order or [c for c in spec.order if c in names]
        return lazy.sort(order, nulls_last=True).collect(engine="in-memory")

    def read_quarantine(
        self,
        symbols: Sequence[str] | None = None,
        timeframes: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        stage: str | None = None,
    ) -> pl.DataFrame:
        """Quarantined rows (rows without a timestamp are filed under the day they were reported for)."""
        if timeframes is not None:
            timeframes = [Timeframe.parse(tf).value for tf in timeframes]
        lazy = self.scan("quarantine", timeframes=timeframes, start=start, end=end)
        ts = pl.col("timestamp")
        if symbols is not None:
            lazy = lazy.filter(pl.col("symbol").is_in(list(symbols)))
        if timeframes is not None:
            lazy = lazy.filter(pl.col("timeframe").is_in(timeframes))
        if stage is not None:
            lazy = lazy.filter(pl.col("stage") == stage)
        if start is not None:
            lazy = lazy.filter((ts >= utc(start)) | ts.is_null())
        if end is not None:
            lazy = lazy.filter((ts < utc(end)) | ts.is_null())
        return lazy.sort("symbol", "timeframe", "timestamp", nulls_last=True).collect(engine="in-memory")

    def info(self) -> pl.DataFrame:
        """What is stored: per bar table, symbol and timeframe the first/last bar, rows, days, expected
        bars between first and last, missing bars, gap ratio (from `clean.gap_report`) and quarantined rows."""
        schema = {
            "table": pl.Utf8,
            "symbol": pl.Utf8,
            "timeframe": pl.Utf8,
            "first": TIMESTAMP_DTYPE,
            "last": TIMESTAMP_DTYPE,
            "rows": pl.Int64,
            "days": pl.Int64,
            "expected": pl.Int64,
            "missing": pl.Int64,
            "gap_ratio": pl.Float64,
            "quarantined": pl.Int64,
        }
        quarantine = (
            self.scan("quarantine")
            .group_by("stage", "symbol", "timeframe")
            .agg(pl.len().cast(pl.Int64).alias("quarantined"))
            .with_columns(
                pl.col("stage").replace_strict(_STAGE_TABLES, default=pl.col("stage")).alias("table")
            )
            .drop("stage")
            .collect()
        )
        tables = [spec.name for spec in registered_tables() if spec.bar_like]
        frames: list[pl.DataFrame] = []
        for table in tables:
            if not self.partitions(table):
                continue
            bars = self.scan(table).select("symbol", "timeframe", "timestamp").collect()
            counts = bars.group_by("symbol", "timeframe").agg(
                pl.len().cast(pl.Int64).alias("rows"),
                pl.col("timestamp").dt.date().n_unique().cast(pl.Int64).alias("days"),
            )
            gaps = gap_report(bars).select(
                "symbol", "timeframe", "first", "last", "expected", "missing", "gap_ratio"
            )
            frames.append(
                gaps.join(counts, on=["symbol", "timeframe"]).with_columns(pl.lit(table).alias("table"))
            )
        if not frames:
            return pl.DataFrame(schema=schema)
        out = pl.concat(frames, how="diagonal_relaxed").join(
            quarantine, on=["table", "symbol", "timeframe"], how="left"
        )
        out = out.with_columns(pl.col("quarantined").fill_null(0))
        order = {name: i for i, name in enumerate(tables)}
        tf_order = {tf.value: i for i, tf in enumerate(Timeframe)}
        out = out.with_columns(
            pl.col("table").replace_strict(order, return_dtype=pl.Int32).alias("_order"),
            pl.col("timeframe").replace_strict(tf_order, default=99, return_dtype=pl.Int32).alias("_tf"),
        )
        return out.sort("_order", "symbol", "_tf").select([pl.col(n).cast(t) for n, t in schema.items()])

    # --- DuckDB --------------------------------------------------------------------------------

    def _create_views(self, con: duckdb.DuckDBPyConnection) -> list[str]:
        created = []
        for spec in registered_tables():
            base = self.table_dir(spec.name)
            sql = view_sql(spec, base, bool(list_partitions(base, spec)))
            if sql is None:
                con.execute(f"DROP VIEW IF EXISTS {spec.name}")
            else:
                con.execute(sql)
                created.append(spec.name)
        return created

    def connect(self, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection to `warehouse.duckdb` where each table is a view over its Parquet files.

        Views are (re)created on a read-write connect, so tables written since the last one appear.
        The caller closes the connection (or uses it as a context manager).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(str(self.duckdb_path), read_only=read_only)
        if not read_only:
            self._create_views(con)
            (self.root / ".duckdb_views").write_text(self._views_state())
        return con

    def _views_state(self) -> str:
        with_data = [s.name for s in registered_tables() if has_data(self.table_dir(s.name), s)]
        return "\n".join([str(self.root), *with_data])

    def keep_views_current(self, *tables: str) -> bool:
        """Make `warehouse.duckdb` show what `tables` hold now, for anyone who opens the file itself.

        A view is a glob over the table's files, so later partitions show by themselves; what goes
        stale is a table's first partition (its view is still the empty placeholder made before any
        file existed: `select count(*) from decisions` said 0 beside 301 journaled rows) or its last
        one removed. That is checked against the marker the last refresh left (a file read and one
        glob per table), and only then are the views re-created (~0.1 s). Returns False when another
        process holds the DuckDB file: tried again at a later write, at most every 30 s."""
        marker = self.root / ".duckdb_views"
        lines = marker.read_text().splitlines() if marker.is_file() else []
        if self.duckdb_path.exists() and lines[:1] == [str(self.root)]:
            listed = set(lines[1:])
            if all((name in listed) == has_data(self.table_dir(name), table_spec(name)) for name in tables):
                return True
        if time.monotonic() < self._views_retry_at:
            return False
        if self.refresh_views():
            return True
        self._views_retry_at = time.monotonic() + 30
        return False

    def refresh_views(self, *, force: bool = False) -> bool:
        """Re-create the views for people who open `warehouse.duckdb` themselves.

        Views are globs, so new partitions show up by themselves; only a table's first (or last)
        partition, or a moved warehouse, needs new views. Skipped when nothing of that changed
        (opening DuckDB costs ~0.1 s). Returns False (and logs why) when another process holds the
        database file; the Parquet data is unaffected."""
        marker = self.root / ".duckdb_views"
        state = self._views_state()
        if not force and self.duckdb_path.exists() and marker.is_file() and marker.read_text() == state:
            return True
        try:
            self.connect().close()
        except duckdb.IOException as error:
            log.warning("could not refresh DuckDB views in %s: %s", self.duckdb_path, error)
            return False
        return True

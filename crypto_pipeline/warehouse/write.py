"""Writing: conform rows to a table's spec, split them by partition, and merge each partition with
what is stored (upsert, append-only, or replace a scope), rewriting only the partitions that change."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl

from crypto_pipeline.market.clean import is_sorted_by_symbol_time
from crypto_pipeline.market.schema import INGESTED_AT, KEY_COLUMNS, TIMESTAMP_DTYPE, to_utc_timestamps
from crypto_pipeline.warehouse.layout import PartitionKey, atomic_write, remove_empty_dirs
from crypto_pipeline.warehouse.tables import Partitioning, TableSpec

PARTITION_DATE = "_partition_date"  # optional input column: the day for rows without a timestamp
# Bookkeeping columns: not compared when deciding whether a row changed, kept from the stored row if not.
META_COLUMNS: tuple[str, ...] = (INGESTED_AT, "detected_at")


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Merge = Callable[[pl.DataFrame | None, pl.DataFrame | None], pl.DataFrame]


@dataclass
class WriteReport:
    """What one upsert/replace did."""

    table: str
    rows_given: int = 0
    rows_stored: int = 0  # rows in the partitions it touched, after the write
    written: list[Path] = field(default_factory=list)  # data files (re)written
    unchanged: int = 0  # partitions whose content was already identical
    deleted: list[Path] = field(default_factory=list)  # partitions emptied and removed


@dataclass(frozen=True)
class Job:
    """One partition to rewrite, with the positions of its new rows in the prepared frame."""

    timeframe: str | None
    day: date | None
    source: pl.DataFrame | None = None
    rows: pl.Series | None = None

    def new(self) -> pl.DataFrame | None:
        # Gathered in the worker thread, so that splitting the batch runs in parallel too.
        if self.source is None or self.rows is None:
            return None
        return self.source[self.rows].drop(PARTITION_DATE)


def prepare(spec: TableSpec, df: pl.DataFrame, ingested_at: datetime | None) -> pl.DataFrame:
    """`df` conformed to the spec, with the stamp column filled and `PARTITION_DATE` set."""
    table = spec.name
    if spec.nullable_key:
        needed = [c for c in ("symbol", "timeframe", spec.time_column) if c is not None and c in spec.key]
    else:
        needed = list(spec.key)
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"rows for {table!r} need column(s) {', '.join(missing)}")
    stamp = utc(ingested_at) if ingested_at is not None else datetime.now(UTC)
    if spec.time_column is not None and spec.time_column in df.columns:
        df = df.with_columns(to_utc_timestamps(df.get_column(spec.time_column)).alias(spec.time_column))
    if spec.stamp_column is not None:
        column = spec.stamp_column
        if column in df.columns:
            df = df.with_columns(to_utc_timestamps(df.get_column(column)).fill_null(stamp).alias(column))
        else:
            df = df.with_columns(pl.lit(stamp, TIMESTAMP_DTYPE).alias(column))
    if not spec.nullable_key:
        nulls = df.select(pl.any_horizontal(pl.col(list(spec.key)).is_null()).sum()).item()
        if nulls:
            names = list(spec.key)
            what = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
            raise ValueError(f"{nulls} row(s) for {table!r} lack a {what}; quarantine them instead")
    # The partition is the row's day, unless the caller files a row elsewhere (quarantined rows
    # without a timestamp, or outside the range asked for); rows with neither go under today.
    if spec.partitioning is Partitioning.NONE:
        df = df.with_columns(pl.lit(None, pl.Date).alias(PARTITION_DATE))
    else:
        day = pl.col(spec.time_column).dt.date()  # type: ignore[arg-type]
        if PARTITION_DATE in df.columns:
            day = pl.coalesce(pl.col(PARTITION_DATE).cast(pl.Date), day)
        df = df.with_columns(pl.coalesce(day, pl.lit(stamp.date())).alias(PARTITION_DATE))
    schema = spec.schema
    if not spec.open_schema:
        extra = [c for c in df.columns if c not in schema and c != PARTITION_DATE]
        if extra:
            raise ValueError(f"unexpected column(s) for {table!r}: {', '.join(extra)}")
        return df.with_columns(
            [pl.col(n).cast(t) if n in df.columns else pl.lit(None, t).alias(n) for n, t in schema.items()]
        ).select([*schema, PARTITION_DATE])
    # Open tables keep the writer's columns in its order; the declared ones are typed and always there.
    return df.with_columns(
        [pl.col(n).cast(t) if n in df.columns else pl.lit(None, t).alias(n) for n, t in schema.items()]
    )


def split(spec: TableSpec, df: pl.DataFrame) -> dict[PartitionKey, pl.Series]:
    """Row positions per partition. On the 2024 5m set, grouping positions (one hash pass, no copies)
    then gathering each partition in its worker thread beat partition_by and sort-and-slice, which
    copy every row up front."""
    if df.is_empty():
        return {}
    if spec.partitioning is Partitioning.NONE:
        return {(None, None): pl.Series("_row", range(df.height), dtype=pl.UInt32)}
    by_timeframe = spec.partitioning is Partitioning.TIMEFRAME_DAY
    single = not by_timeframe or df.get_column("timeframe").n_unique() == 1
    keys = [PARTITION_DATE] if single else ["timeframe", PARTITION_DATE]  # a string key costs ~5x
    groups = (
        df.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), *keys)
        .group_by(keys, maintain_order=True)
        .agg("_row")
    )
    positions = groups.get_column("_row")  # iterating a list column yields Series, not Python lists
    if single:
        tf = str(df.get_column("timeframe")[0]) if by_timeframe else None
        return {(tf, day): rows for day, rows in zip(groups[PARTITION_DATE], positions, strict=True)}
    return {
        (str(tf), day): rows
        for tf, day, rows in zip(groups["timeframe"], groups[PARTITION_DATE], positions, strict=True)
    }


def run_jobs(
    table: str,
    jobs: list[Job],
    path_of: Callable[[Job], Path],
    stop: Path,
    merge: Merge,
    progress: Callable[[int], None] | None,
    max_workers: int,
) -> WriteReport:
    """Merge each job's rows into its partition file, in parallel; report what changed."""
    report = WriteReport(table=table)

    def work(job: Job) -> tuple[str, Path, int]:
        path = path_of(job)
        existing = pl.read_parquet(path) if path.is_file() else None
        merged = merge(existing, job.new())
        if existing is not None and merged.equals(existing):
            return "unchanged", path, merged.height
        if merged.is_empty():
            if existing is not None:
                path.unlink()
                remove_empty_dirs(path.parent, stop=stop)
                return "deleted", path, 0
            return "unchanged", path, 0
        atomic_write(merged, path)
        return "written", path, merged.height

    def record(result: tuple[str, Path, int]) -> None:
        outcome, path, rows = result
        report.rows_stored += rows
        if outcome == "written":
            report.written.append(path)
        elif outcome == "deleted":
            report.deleted.append(path)
        else:
            report.unchanged += 1
        if progress is not None:
            progress(1)

    if len(jobs) <= 1 or max_workers <= 1:
        for job in jobs:
            record(work(job))
    else:
        with ThreadPoolExecutor(max_workers) as pool:
            for result in pool.map(work, jobs):
                record(result)
    report.written.sort()
    return report


# --- merges ----------------------------------------------------------------------------------------


def upsert_merge(spec: TableSpec, presorted: bool) -> Merge:
    """Stored rows + new rows, the new row winning on a key collision."""
    key, order = list(spec.key), spec.order

    def merge(existing: pl.DataFrame | None, new: pl.DataFrame | None) -> pl.DataFrame:
        assert new is not None
        new = new if presorted else unique_sorted(new, key, order)
        if existing is None:
            return new
        if same_values(new, existing):  # re-ingesting what is stored: keep the stored rows
            return existing
        new = carry_meta(new, existing, key)
        kept = existing.join(new.select(key), on=key, how="anti", nulls_equal=True)
        return sorted_by(pl.concat([kept, new], how="diagonal_relaxed"), order)

    return merge


def append_merge(spec: TableSpec) -> Merge:
    """Stored rows + new rows whose key is not stored yet: a journal's first record of an event stands,
    so writing the same event again changes nothing."""
    key, order = list(spec.key), spec.order

    def merge(existing: pl.DataFrame | None, new: pl.DataFrame | None) -> pl.DataFrame:
        assert new is not None
        new = unique_sorted(new, key, order, keep="first")
        if existing is None:
            return new
        fresh = new.join(existing.select(key), on=key, how="anti", nulls_equal=True)
        if fresh.is_empty():
            return existing
        return sorted_by(pl.concat([existing, fresh], how="diagonal_relaxed"), order)

    return merge


def replace_merge(spec: TableSpec, in_scope: pl.Expr, empty: pl.Schema) -> Merge:
    """Stored rows outside `in_scope` + exactly the new rows: stored rows in scope that the new rows
    lack are removed."""
    key, order = list(spec.key), spec.order
    replaced = in_scope.fill_null(False)

    def merge(existing: pl.DataFrame | None, new: pl.DataFrame | None) -> pl.DataFrame:
        if new is None:
            new = pl.DataFrame(schema=empty)
        if existing is None:
            return unique_sorted(new, key, order)
        new = unique_sorted(new, key, order)
        if same_values(new, existing.filter(replaced)):  # a rebuild that produced the same rows
            return existing
        new = carry_meta(new, existing, key)
        kept = existing.filter(~replaced)
        merged = pl.concat([kept, new], how="diagonal_relaxed")
        # A kept row with a new row's key (possible when the scope leaves it out) yields to the new one.
        return sorted_by(merged.unique(subset=key, keep="last", maintain_order=True), order)

    return merge


def unique_sorted(
    df: pl.DataFrame, key: Sequence[str], order: Sequence[str], keep: str = "last"
) -> pl.DataFrame:
    """One row per key (the last given wins, or the first with keep="first"), sorted; skips the work
    when the rows already are (one partition holds one timeframe, so strictly increasing
    (symbol, timestamp) is enough)."""
    if tuple(key) == KEY_COLUMNS and is_sorted_by_symbol_time(df):
        return df
    return sorted_by(df.unique(subset=list(key), keep=keep, maintain_order=True), order)  # type: ignore[arg-type]


def sorted_by(df: pl.DataFrame, order: Sequence[str]) -> pl.DataFrame:
    return df.sort(list(order), nulls_last=True, maintain_order=True)


def same_values(new: pl.DataFrame, stored: pl.DataFrame) -> bool:
    """Same rows in the same order, ignoring bookkeeping columns (both are sorted by key)."""
    if new.height != stored.height or set(new.columns) != set(stored.columns):
        return False
    values = [c for c in new.columns if c not in META_COLUMNS]
    return new.select(values).equals(stored.select(values))


def carry_meta(new: pl.DataFrame, existing: pl.DataFrame, key: Sequence[str]) -> pl.DataFrame:
    """New rows identical to a stored row (all non-meta values equal) keep the stored meta columns,
    so re-writing the same data changes nothing, not even `_ingested_at`."""
    meta = [c for c in META_COLUMNS if c in new.columns and c in existing.columns]
    if not meta or existing.is_empty():
        return new
    values = [c for c in new.columns if c not in key and c not in meta and c in existing.columns]
    old = existing.select([*key, *values, *meta]).rename({c: f"{c}__old" for c in (*values, *meta)})
    joined = new.join(old, on=list(key), how="left", nulls_equal=True)
    same = (
        pl.all_horizontal([pl.col(c).eq_missing(pl.col(f"{c}__old")) for c in values])
        if values
        else pl.lit(True)
    )
    same = same & pl.col(f"{meta[0]}__old").is_not_null()
    return joined.with_columns(
        [pl.when(same).then(pl.col(f"{m}__old")).otherwise(pl.col(m)).alias(m) for m in meta]
    ).select(new.columns)

"""Where a table's rows live on disk, and the one way files get there (temp file, then rename)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable
from datetime import date
from pathlib import Path

import polars as pl

from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.warehouse.tables import Partitioning, TableSpec

DATA_FILE = "data.parquet"
# lz4: measured here on the 2024 5m set, about 20% faster to write than zstd for 20% more disk.
PARQUET_COMPRESSION = "lz4"

# A partition: (timeframe, day); levels a table is not partitioned by are None.
PartitionKey = tuple[str | None, date | None]


def partition_path(base: Path, spec: TableSpec, timeframe: str | None, day: date | None) -> Path:
    """The data file of one partition of the table stored under `base`."""
    path = base
    if spec.partitioning is Partitioning.TIMEFRAME_DAY:
        path = path / f"timeframe={timeframe}"
    if spec.partitioning is not Partitioning.NONE:
        assert day is not None
        path = path / f"date={day.isoformat()}"
    return path / DATA_FILE


def glob_pattern(spec: TableSpec) -> str:
    """The data files of a table, relative to its directory."""
    if spec.partitioning is Partitioning.TIMEFRAME_DAY:
        return f"timeframe=*/date=*/{DATA_FILE}"
    if spec.partitioning is Partitioning.DAY:
        return f"date=*/{DATA_FILE}"
    return DATA_FILE


def list_partitions(
    base: Path,
    spec: TableSpec,
    *,
    timeframes: Iterable[str] | None = None,
    first_day: date | None = None,
    last_day: date | None = None,
) -> list[tuple[str | None, date | None, Path]]:
    """Existing partitions (timeframe, day, file) of the table under `base`, sorted by timeframe then day."""
    if not base.is_dir():
        return []
    if spec.partitioning is Partitioning.NONE:
        path = base / DATA_FILE
        return [(None, None, path)] if path.is_file() else []
    by_timeframe = spec.partitioning is Partitioning.TIMEFRAME_DAY
    wanted = {Timeframe.parse(tf).value for tf in timeframes} if timeframes is not None else None
    levels: list[tuple[str | None, str]] = [(None, str(base))]
    if by_timeframe:
        levels = []
        for entry in os.scandir(base):
            if not (entry.is_dir() and entry.name.startswith("timeframe=")):
                continue
            tf = entry.name.removeprefix("timeframe=")
            if wanted is None or tf in wanted:
                levels.append((tf, entry.path))
    found: list[tuple[str | None, date | None, Path]] = []
    for tf, directory in levels:
        for day_entry in os.scandir(directory):
            if not day_entry.name.startswith("date="):
                continue
            try:
                day = date.fromisoformat(day_entry.name.removeprefix("date="))
            except ValueError:
                continue
            if (first_day and day < first_day) or (last_day and day > last_day):
                continue
            path = Path(day_entry.path) / DATA_FILE
            if path.is_file():
                found.append((tf, day, path))
    return sorted(found, key=lambda p: (p[0] or "", p[1]))


def has_data(base: Path, spec: TableSpec) -> bool:
    return base.is_dir() and any(True for _ in base.glob(glob_pattern(spec)))


def atomic_write(df: pl.DataFrame, path: Path) -> None:
    """Write to a hidden temp file in the target's directory, then rename over it (atomic on POSIX),
    so readers and crashes never see half a file."""
    try:
        os.mkdir(path.parent)  # the usual case: a new day under an existing timeframe directory
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        df.write_parquet(tmp, compression=PARQUET_COMPRESSION, statistics=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_empty_dirs(directory: Path, *, stop: Path) -> None:
    while directory != stop and directory.is_dir() and not any(directory.iterdir()):
        shutil.rmtree(directory)
        directory = directory.parent

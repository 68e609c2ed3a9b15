"""DuckDB: one VIEW per table over its Parquet files, so `duckdb warehouse/warehouse.duckdb` can query them."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from crypto_pipeline.warehouse.layout import glob_pattern
from crypto_pipeline.warehouse.tables import Partitioning, TableSpec

_HIVE_TYPES = {
    Partitioning.TIMEFRAME_DAY: "{'timeframe': VARCHAR, 'date': DATE}",
    Partitioning.DAY: "{'date': DATE}",
}


def view_sql(spec: TableSpec, base: Path, has_files: bool) -> str | None:
    """CREATE VIEW over the table's files; an empty typed view for a fixed-schema table without files
    (so queries written today keep working before the first write); None when there is neither."""
    table = spec.name
    if has_files:
        pattern = str(base / glob_pattern(spec)).replace("'", "''")
        hive = _HIVE_TYPES.get(spec.partitioning)
        options = f"hive_partitioning = true, hive_types = {hive}" if hive else "hive_partitioning = false"
        return f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet('{pattern}', {options}, union_by_name = true)"
    if spec.open_schema:
        return None
    casts = [f"CAST(NULL AS {duck_type(t)}) AS {name}" for name, t in spec.schema.items()]
    if spec.partitioning is not Partitioning.NONE:
        casts.append("CAST(NULL AS DATE) AS date")
    return f"CREATE OR REPLACE VIEW {table} AS SELECT {', '.join(casts)} WHERE false"


def duck_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.List):
        return f"{duck_type(dtype.inner)}[]"
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMP WITH TIME ZONE"
    simple = {
        pl.Utf8: "VARCHAR",
        pl.Float64: "DOUBLE",
        pl.Int32: "INTEGER",
        pl.Int64: "BIGINT",
        pl.Boolean: "BOOLEAN",
        pl.Date: "DATE",
    }
    for polars_type, name in simple.items():
        if dtype == polars_type:
            return name
    raise TypeError(f"no DuckDB type for {dtype}")

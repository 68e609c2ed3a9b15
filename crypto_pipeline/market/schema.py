"""The one bar schema every source is conformed to, and the warehouse table schemas built on it.

A bar is `symbol, timestamp, open, high, low, close, volume, trade_count, vwap`; `timestamp` is the
UTC bar OPEN time in microseconds (the precision DuckDB and Parquet share), `trade_count` and `vwap`
are nullable because not every venue reports them (Binance files do not, Alpaca does).
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from crypto_pipeline.errors import UserInputError

TIMESTAMP_DTYPE = pl.Datetime("us", "UTC")
INGESTED_AT = "_ingested_at"

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
OHLCV_COLUMNS: tuple[str, ...] = (*PRICE_COLUMNS, "volume")
OPTIONAL_BAR_COLUMNS: tuple[str, ...] = ("trade_count", "vwap")
REQUIRED_BAR_COLUMNS: tuple[str, ...] = ("symbol", "timestamp", *OHLCV_COLUMNS)
BAR_COLUMNS: tuple[str, ...] = (*REQUIRED_BAR_COLUMNS, *OPTIONAL_BAR_COLUMNS)

BAR_SCHEMA = pl.Schema(
    {
        "symbol": pl.Utf8,
        "timestamp": TIMESTAMP_DTYPE,
        "open": pl.Float64,
        "high": pl.Float64,
        "low": pl.Float64,
        "close": pl.Float64,
        "volume": pl.Float64,
        "trade_count": pl.Float64,
        "vwap": pl.Float64,
    }
)

# Warehouse rows carry their timeframe so that one table holds every timeframe.
KEY_COLUMNS: tuple[str, ...] = ("symbol", "timeframe", "timestamp")
RAW_BARS_SCHEMA = pl.Schema(
    {"symbol": pl.Utf8, "timeframe": pl.Utf8, **{k: v for k, v in BAR_SCHEMA.items() if k != "symbol"}}
)
# `bars` adds how many base bars formed each bar and whether the slot before it is empty.
BARS_SCHEMA = pl.Schema({**RAW_BARS_SCHEMA, "bar_count": pl.Int32, "gap_before": pl.Boolean})
QUARANTINE_SCHEMA = pl.Schema(
    {**RAW_BARS_SCHEMA, "reason": pl.Utf8, "stage": pl.Utf8, "detected_at": TIMESTAMP_DTYPE}
)

# Alpaca's wire names (`{"t","o","h","l","c","v","n","vw"}`, `S` on the stream) -> ours.
ALPACA_WIRE_NAMES: dict[str, str] = {
    "S": "symbol",
    "t": "timestamp",
    "o": "open",
    "h": "high",
    "l": "low",
    "c": "close",
    "v": "volume",
    "n": "trade_count",
    "vw": "vwap",
}

# Columns conform_bars keeps when present because later stages need them.
PASSTHROUGH_COLUMNS: tuple[str, ...] = ("timeframe", INGESTED_AT)


def empty_frame(schema: pl.Schema) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def to_utc_timestamps(column: pl.Series) -> pl.Series:
    """Any timestamp column (strings, naive or zoned datetimes, dates, any unit) -> Datetime(us, UTC).

    Naive datetimes are taken as UTC (the project's convention); unparseable strings become null so
    that the row can be quarantined as `bad_timestamp` instead of failing the whole batch.
    """
    dtype = column.dtype
    if dtype == pl.Utf8:
        return column.str.to_datetime(time_unit="us", time_zone="UTC", strict=False)
    if dtype == pl.Date:
        column = column.cast(pl.Datetime("us"))
        dtype = column.dtype
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            column = column.dt.replace_time_zone("UTC")
        elif dtype.time_zone != "UTC":
            column = column.dt.convert_time_zone("UTC")
        return column.dt.cast_time_unit("us")
    if dtype == pl.Null:
        return column.cast(TIMESTAMP_DTYPE)
    raise UserInputError(
        f"column 'timestamp' has type {dtype}; expected datetimes or ISO-8601 strings "
        "(integers are refused because their unit, s/ms/us/ns, is ambiguous)"
    )


def _already_conformed(
    df: pl.DataFrame, symbol: str | None, timeframe: str | None, keep: Sequence[str]
) -> bool:
    """Frames from our own sources are already in shape; re-casting 1.6M rows is not free."""
    if symbol is not None and "symbol" not in df.columns:
        return False
    expected = [("symbol", pl.Utf8)]
    if timeframe is not None or "timeframe" in df.columns:
        if timeframe is not None and (
            "timeframe" not in df.columns or df.get_column("timeframe").ne_missing(timeframe).any()
        ):
            return False
        expected.append(("timeframe", pl.Utf8))
    expected += [(name, BAR_SCHEMA[name]) for name in BAR_SCHEMA if name != "symbol"]
    expected += [(name, df.schema[name]) for name in keep if name in df.columns and name != "timeframe"]
    if INGESTED_AT in df.columns and df.schema[INGESTED_AT] != TIMESTAMP_DTYPE:
        return False
    return list(df.schema.items()) == expected


def conform_bars(
    df: pl.DataFrame,
    *,
    symbol: str | None = None,
    timeframe: str | None = None,
    keep: Sequence[str] = PASSTHROUGH_COLUMNS,
) -> pl.DataFrame:
    """Cast any source's bars to `BAR_SCHEMA` (plus `timeframe` and the `keep` columns when present).

    Accepts Alpaca wire names, ns/ms timestamps, naive (UTC) or zoned datetimes, ISO strings, and
    frames missing the optional `trade_count`/`vwap` columns. `symbol`/`timeframe` fill those columns
    when the frame lacks them (a per-symbol CSV). Values that cannot be cast become null rather than
    raising, so the cleaning step quarantines the row with a reason. Other extra columns are dropped.
    Rows are neither dropped nor reordered.

    Raises UserInputError when a required column is missing altogether.
    """
    if _already_conformed(df, symbol, timeframe, keep):
        return df
    renames = {
        wire: ours
        for wire, ours in ALPACA_WIRE_NAMES.items()
        if wire in df.columns and ours not in df.columns
    }
    if renames:
        df = df.rename(renames)
    if symbol is not None and "symbol" not in df.columns:
        df = df.with_columns(pl.lit(symbol, pl.Utf8).alias("symbol"))
    missing = [c for c in REQUIRED_BAR_COLUMNS if c not in df.columns]
    if missing:
        raise UserInputError(
            f"bars are missing column(s) {', '.join(missing)}; found {', '.join(df.columns) or 'none'}"
        )
    if timeframe is not None:
        df = df.with_columns(pl.lit(str(timeframe), pl.Utf8).alias("timeframe"))

    columns: list[pl.Series | pl.Expr] = [pl.col("symbol").cast(pl.Utf8)]
    if "timeframe" in df.columns:
        columns.append(pl.col("timeframe").cast(pl.Utf8))
    columns.append(to_utc_timestamps(df.get_column("timestamp")).alias("timestamp"))
    for name in (*OHLCV_COLUMNS, *OPTIONAL_BAR_COLUMNS):
        if name in df.columns:
            columns.append(pl.col(name).cast(pl.Float64, strict=False))
        else:
            columns.append(pl.lit(None, pl.Float64).alias(name))
    for name in keep:
        if name in df.columns and name != "timeframe":
            columns.append(pl.col(name))
    out = df.select(columns)
    if INGESTED_AT in out.columns:
        out = out.with_columns(to_utc_timestamps(out.get_column(INGESTED_AT)).alias(INGESTED_AT))
    return out

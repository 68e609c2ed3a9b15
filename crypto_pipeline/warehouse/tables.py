"""The table registry: one `TableSpec` per table, saying everything the warehouse knows about it.

A module that needs a table of its own registers a spec (`register_table(TableSpec(...))`) at import
time; the warehouse then writes, reads and views it like the built-in ones. A name nobody registered
still works, as an open raw table keyed by (symbol, timeframe, timestamp), as before the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import polars as pl

from crypto_pipeline.market.schema import (
    BARS_SCHEMA,
    INGESTED_AT,
    KEY_COLUMNS,
    QUARANTINE_SCHEMA,
    RAW_BARS_SCHEMA,
    TIMESTAMP_DTYPE,
)


class Partitioning(StrEnum):
    """How rows map to files under `<root>/<table>/`."""

    TIMEFRAME_DAY = "timeframe_day"  # timeframe=<tf>/date=<YYYY-MM-DD>/data.parquet (bar-like tables)
    DAY = "day"  # date=<YYYY-MM-DD>/data.parquet, the day of `time_column`
    NONE = "none"  # data.parquet: small tables (a cache) rewritten whole


@dataclass(frozen=True)
class TableSpec:
    """What one table is.

    - `schema`: the columns (polars dtypes). With `open_schema` they are the columns the table always
      has (missing ones are written as nulls) and others may be added by the writer over time;
      without it, any other column is refused.
    - `key`: one row per key; `upsert` resolves collisions on it.
    - `kind`: `raw` tables keep what they were given (`upsert` merges; the new row wins, or with
      `append_only` the stored one does, so re-writing a journal event is a no-op); `derived` tables
      are rebuilt from others, and a write replaces the rows it covers, so a rebuild drops stale rows.
    - `time_column`: the row's time: it picks the day partition and the column `read(start, end)`
      and `as_of` filter on.
    - `stamp_column`: a bookkeeping column set to the write time when the writer leaves it out
      (added to the schema when not declared).
    - `nullable_key`: rows may lack key values (quarantined rows without a timestamp).
    """

    name: str
    schema: pl.Schema
    key: tuple[str, ...]
    kind: Literal["raw", "derived"]
    partitioning: Partitioning = Partitioning.TIMEFRAME_DAY
    time_column: str | None = "timestamp"
    open_schema: bool = False
    append_only: bool = False
    stamp_column: str | None = INGESTED_AT
    nullable_key: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"table names are identifiers, got {self.name!r}")
        if self.stamp_column is not None and self.stamp_column not in self.schema:
            # Every write stamps rows, so the column is part of the table whether declared or not.
            schema = pl.Schema({**self.schema, self.stamp_column: TIMESTAMP_DTYPE})
            object.__setattr__(self, "schema", schema)
        missing = [c for c in self.key if c not in self.schema]
        if missing:
            raise ValueError(f"{self.name}: key column(s) {missing} are not in the schema")
        if self.partitioning is not Partitioning.NONE and self.time_column not in self.schema:
            raise ValueError(f"{self.name}: partitioned by day, so time_column must be in the schema")
        if self.partitioning is Partitioning.TIMEFRAME_DAY and "timeframe" not in self.schema:
            raise ValueError(f"{self.name}: partitioned by timeframe, so it needs a timeframe column")

    @property
    def derived(self) -> bool:
        return self.kind == "derived"

    @property
    def bar_like(self) -> bool:
        """Rows are bars of a (symbol, timeframe) series keyed by their open time."""
        return self.key == KEY_COLUMNS and self.time_column == "timestamp"

    @property
    def order(self) -> list[str]:
        """Sort order within a file: symbol, time, then the rest of the key."""
        first = [c for c in ("symbol", self.time_column) if c in self.key]
        return first + [c for c in self.key if c not in first]


_REGISTRY: dict[str, TableSpec] = {}


def register_table(spec: TableSpec, *, replace: bool = False) -> TableSpec:
    """Make `spec.name` a table the warehouse knows. Registering the same spec twice is harmless;
    a different spec under a taken name is refused unless `replace`."""
    current = _REGISTRY.get(spec.name)
    if current is not None and current != spec and not replace:
        raise ValueError(f"table {spec.name!r} is already registered with a different spec")
    _REGISTRY[spec.name] = spec
    return spec


def table_spec(name: str) -> TableSpec:
    """The registered spec of `name`, or the default for an unregistered table: open, raw, bar-keyed."""
    spec = _REGISTRY.get(name)
    if spec is not None:
        return spec
    if not name.isidentifier():
        raise ValueError(f"table names are identifiers, got {name!r}")
    return TableSpec(name, pl.Schema(_KEY_SCHEMA), KEY_COLUMNS, "raw", open_schema=True)


def registered_tables() -> tuple[TableSpec, ...]:
    """Every registered spec, in registration order (the built-in tables first)."""
    return tuple(_REGISTRY.values())


def _schema(**columns: pl.DataType) -> pl.Schema:
    return pl.Schema(columns)


_KEY_SCHEMA = {"symbol": pl.Utf8, "timeframe": pl.Utf8, "timestamp": TIMESTAMP_DTYPE}
_STAMP = {INGESTED_AT: TIMESTAMP_DTYPE}

# --- the market data tables ------------------------------------------------------------------------

RAW_BARS = register_table(
    TableSpec(
        "raw_bars",
        pl.Schema({**RAW_BARS_SCHEMA, **_STAMP}),
        KEY_COLUMNS,
        "raw",
        description="bars as the source sent them (screened: rows without a key are quarantined)",
    )
)
BARS = register_table(
    TableSpec(
        "bars",
        pl.Schema({**BARS_SCHEMA, **_STAMP}),
        KEY_COLUMNS,
        "derived",
        description="clean, de-duplicated bars, resampled to the higher timeframes",
    )
)
FEATURES = register_table(
    TableSpec(
        "features",
        pl.Schema({**_KEY_SCHEMA, **_STAMP}),
        KEY_COLUMNS,
        "derived",
        open_schema=True,  # indicators come and go with the feature code
        description="indicators per bar",
    )
)
MARKET_STATES = register_table(
    TableSpec(
        "market_states",
        pl.Schema(
            {
                **_KEY_SCHEMA,
                "at": TIMESTAMP_DTYPE,
                "prompt": pl.Utf8,
                "prompt_version": pl.Utf8,
                "prompt_hash": pl.Utf8,
                **_STAMP,
            }
        ),
        KEY_COLUMNS,
        "derived",
        open_schema=True,  # one column per state field
        description="one market-state snapshot and its prompt per symbol at every decision-bar close",
    )
)
# Quarantine keeps every distinct bad row: the same key can be rejected for different values.
QUARANTINE = register_table(
    TableSpec(
        "quarantine",
        QUARANTINE_SCHEMA,
        ("stage", "symbol", "timeframe", "timestamp", "reason", "open", "high", "low", "close", "volume"),
        "raw",
        stamp_column="detected_at",
        nullable_key=True,
        description="rejected rows with the reason, the stage (raw or bars) and when",
    )
)

# --- training --------------------------------------------------------------------------------------

SFT_DATASET = register_table(
    TableSpec(
        "sft_dataset",
        _schema(
            symbol=pl.Utf8,
            at=TIMESTAMP_DTYPE,
            label_end=TIMESTAMP_DTYPE,
            split=pl.Utf8,
            prompt_version=pl.Utf8,
            prompt_hash=pl.Utf8,
            system_prompt=pl.Utf8,
            prompt=pl.Utf8,
            response=pl.Utf8,
            action=pl.Utf8,
            forward_return=pl.Float64,
            **_STAMP,
        ),
        ("symbol", "at"),
        "derived",
        partitioning=Partitioning.DAY,
        time_column="at",
        open_schema=True,  # label variants may add columns
        description="supervised fine-tuning examples: prompt, labelled response, split",
    )
)
DECISION_CACHE = register_table(
    TableSpec(
        "decision_cache",
        _schema(
            provider=pl.Utf8,
            model_version=pl.Utf8,
            prompt_hash=pl.Utf8,
            prompt_version=pl.Utf8,
            decision=pl.Utf8,  # the parsed decision as JSON
            raw_output=pl.Utf8,
            latency_ms=pl.Float64,
            prompt_tokens=pl.Int64,
            completion_tokens=pl.Int64,
            **_STAMP,
        ),
        ("provider", "model_version", "prompt_hash"),
        "raw",
        partitioning=Partitioning.NONE,
        time_column=None,
        description="a model's decision per prompt, so backtests do not ask the same model twice",
    )
)

# --- the live journal: append-only, re-writing the same event is a no-op ---------------------------

_JOURNAL = dict(kind="raw", partitioning=Partitioning.DAY, time_column="time", append_only=True)
DECISIONS = register_table(
    TableSpec(
        "decisions",
        _schema(
            time=TIMESTAMP_DTYPE,
            run_id=pl.Utf8,
            symbol=pl.Utf8,
            provider=pl.Utf8,
            model_version=pl.Utf8,
            prompt_version=pl.Utf8,
            prompt_hash=pl.Utf8,
            prompt=pl.Utf8,  # the user prompt exactly as the model saw it
            state=pl.Utf8,  # the MarketState as JSON, as the prompt rendered it
            order_book=pl.Utf8,  # live only: the order book at the decision (JSON), shown or not
            raw_output=pl.Utf8,
            decision=pl.Utf8,  # the parsed decision as JSON
            action=pl.Utf8,
            valid=pl.Boolean,
            invalid_reason=pl.Utf8,
            latency_ms=pl.Float64,
            prompt_tokens=pl.Int64,
            completion_tokens=pl.Int64,
            **_STAMP,
        ),
        ("run_id", "symbol", "time"),
        description="every decision the live loop asked for, valid or not",
        **_JOURNAL,
    )
)
RISK_VERDICTS = register_table(
    TableSpec(
        "risk_verdicts",
        _schema(
            time=TIMESTAMP_DTYPE,
            run_id=pl.Utf8,
            symbol=pl.Utf8,
            action=pl.Utf8,
            verdict=pl.Utf8,  # approved, resized or rejected
            reasons=pl.List(pl.Utf8),
            side=pl.Utf8,
            qty=pl.Float64,
            notional=pl.Float64,
            client_order_id=pl.Utf8,
            **_STAMP,
        ),
        ("run_id", "symbol", "time"),
        description="the risk engine's verdict on each decision, with its reasons",
        **_JOURNAL,
    )
)
ORDERS = register_table(
    TableSpec(
        "orders",
        _schema(
            time=TIMESTAMP_DTYPE,
            run_id=pl.Utf8,
            symbol=pl.Utf8,
            client_order_id=pl.Utf8,
            order_id=pl.Utf8,
            side=pl.Utf8,
            type=pl.Utf8,
            time_in_force=pl.Utf8,
            qty=pl.Float64,
            notional=pl.Float64,
            limit_price=pl.Float64,
            status=pl.Utf8,
            filled_qty=pl.Float64,
            filled_avg_price=pl.Float64,
            **_STAMP,
        ),
        ("client_order_id", "time", "status"),
        description="one row per order event (submitted, accepted, filled, canceled, ...)",
        **_JOURNAL,
    )
)
FILLS = register_table(
    TableSpec(
        "fills",
        _schema(
            time=TIMESTAMP_DTYPE,
            run_id=pl.Utf8,
            symbol=pl.Utf8,
            fill_id=pl.Utf8,
            order_id=pl.Utf8,
            client_order_id=pl.Utf8,
            side=pl.Utf8,
            qty=pl.Float64,
            price=pl.Float64,
            fee=pl.Float64,
            fee_currency=pl.Utf8,
            **_STAMP,
        ),
        ("fill_id",),
        description="executions: price, quantity and fee",
        **_JOURNAL,
    )
)
EQUITY = register_table(
    TableSpec(
        "equity",
        _schema(
            time=TIMESTAMP_DTYPE,
            run_id=pl.Utf8,
            equity=pl.Float64,
            cash=pl.Float64,
            exposure=pl.Float64,
            positions_value=pl.Float64,
            realized_pnl=pl.Float64,
            unrealized_pnl=pl.Float64,
            **_STAMP,
        ),
        ("run_id", "time"),
        description="account equity, cash and exposure over time",
        **_JOURNAL,
    )
)
SESSIONS = register_table(
    TableSpec(
        "sessions",
        _schema(
            time=TIMESTAMP_DTYPE,
            run_id=pl.Utf8,
            provider=pl.Utf8,  # what trades: rules, crypto-policy:N, ...
            model_version=pl.Utf8,
            note=pl.Utf8,  # how it was chosen, every fallback said
            role=pl.Utf8,  # "trading" (orders go to the venue) or "shadow" (a shadow book, no order)
            trading_run_id=pl.Utf8,  # a shadow's session: the run whose stream and states it shares
            venue=pl.Utf8,
            symbols=pl.List(pl.Utf8),
            **_STAMP,
        ),
        ("run_id", "time"),
        description="one row per live session start: what traded, why, and the shadows beside it",
        **_JOURNAL,
    )
)

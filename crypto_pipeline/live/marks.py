"""What the risk engine reads of a bars frame besides the states: each symbol's newest close (the marks
holdings are valued at) and its recent returns (the correlation rule)."""

from __future__ import annotations

import polars as pl


def last_closes(frame: pl.DataFrame) -> dict[str, float]:
    """The newest close of each symbol of a bars frame: the marks the risk engine values holdings at."""
    if frame.is_empty():
        return {}
    last = frame.group_by("symbol").agg(pl.col("close").sort_by("timestamp").last())
    return {row["symbol"]: float(row["close"]) for row in last.iter_rows(named=True)}


def recent_returns(frame: pl.DataFrame, window: int) -> dict[str, list[float]]:
    """Each symbol's last `window` bar returns, for the risk engine's correlation rule."""
    out = {}
    for (symbol,), rows in frame.partition_by("symbol", as_dict=True).items():
        closes = rows.sort("timestamp")["close"].tail(window + 1)
        out[str(symbol)] = closes.pct_change().drop_nulls().to_list()
    return out

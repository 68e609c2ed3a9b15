"""Look-ahead audit in the spirit of freqtrade's ``lookahead-analysis``: a point-in-time computation gives
the same value for a row whether or not the data after that row exists.

Any function from a time-stamped frame to a time-stamped frame can be audited: features, market states,
prompts, labels (labels are SUPPOSED to fail it, which makes a good test of the audit itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

import polars as pl


class LookaheadError(AssertionError):
    """A value at or before a cut time changed when the data after the cut was removed."""


def assert_no_lookahead(
    fn: Callable[[pl.DataFrame], pl.DataFrame],
    df: pl.DataFrame,
    cut_times: Iterable[datetime],
    *,
    time_column: str = "timestamp",
    key_columns: Sequence[str] = ("symbol", "timestamp"),
    output_time_column: str | None = None,
) -> int:
    """Prove that ``fn`` never reads the future: for every cut time ``t``, ``fn(df[time <= t])`` equals
    ``fn(df)`` exactly (nulls and NaNs included) on every output row whose time is ``<= t``.

    `key_columns` identify an output row; `output_time_column` (default `time_column`) is the output's time,
    e.g. ``"at"`` for market states. Returns the number of rows compared; raises `LookaheadError` naming the
    cut, the column, the row and both values at the first difference.
    """
    out_time = output_time_column or time_column
    full = fn(df)
    _require_columns(full, [*key_columns, out_time], "fn(df)")
    compared = 0
    for cut in cut_times:
        truncated = fn(df.filter(pl.col(time_column) <= cut))
        _require_columns(truncated, [*key_columns, out_time], "fn(truncated df)")
        expected = full.filter(pl.col(out_time) <= cut).sort(key_columns)
        actual = truncated.filter(pl.col(out_time) <= cut).sort(key_columns)
        _assert_same_rows(expected, actual, key_columns, cut)
        compared += expected.height
    return compared


def _require_columns(frame: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks the column(s) {missing} needed to line rows up")


def _assert_same_rows(
    expected: pl.DataFrame, actual: pl.DataFrame, keys: Sequence[str], cut: datetime
) -> None:
    if expected.height != actual.height or not expected.select(keys).equals(actual.select(keys)):
        only_full = expected.select(keys).join(
            actual.select(keys), on=list(keys), how="anti", nulls_equal=True
        )
        only_cut = actual.select(keys).join(
            expected.select(keys), on=list(keys), how="anti", nulls_equal=True
        )
        raise LookaheadError(
            f"cut {cut}: rows up to the cut differ: {only_full.height} only with the full data "
            f"(e.g. {only_full.head(1).to_dicts()}), {only_cut.height} only with the truncated data "
            f"(e.g. {only_cut.head(1).to_dicts()})"
        )
    if set(expected.columns) != set(actual.columns):
        raise LookaheadError(
            f"cut {cut}: columns differ: {sorted(set(expected.columns) ^ set(actual.columns))}"
        )
    for name in expected.columns:
        differs = expected[name].ne_missing(actual[name])
        if differs.any():
            row = int(differs.arg_true()[0])
            where = {key: expected[key][row] for key in keys}
            raise LookaheadError(
                f"cut {cut}: {name!r} at {where} is {expected[name][row]!r} with the full data but "
                f"{actual[name][row]!r} with the data cut at {cut}; {int(differs.sum())} value(s) differ"
            )

"""What `backtest` and `promote` check before anything heavy loads (vectorbt, numba, torch, MLflow): the
policy's name, the range, the timeframe, the EMA spans, the data folder, its symbols and whether it holds
bars in the range. Bad input fails here in about a second, with the same messages the library gives."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from crypto_pipeline.errors import UserInputError
from crypto_pipeline.market.recorded import folder_bars
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.timeutil import as_utc

POLICIES = ("ema_cross", "rsi", "buy_hold", "rules", "lgbm", "llm")


def check_policy(policy: str) -> str:
    """The policy's kind (`llm` for `llm:REF`); an unknown one is a UserInputError naming the choices."""
    base = policy.split(":", 1)[0]
    if base not in POLICIES or (":" in policy and (base != "llm" or not policy.split(":", 1)[1])):
        raise UserInputError(
            f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}, llm:ALIAS_OR_VERSION or llm:base"
        )
    return base


def check_inputs(
    *,
    symbols: Sequence[str],
    timeframe: str,
    start: datetime | str,
    end: datetime | str,
    data_dir: Path | str,
    policy: str | None = None,
    fast: int | None = None,
    slow: int | None = None,
) -> None:
    """Every check that needs no heavy import; raises the first UserInputError (ValueError for a bad
    timeframe, as `Timeframe.parse` does)."""
    if policy is not None:
        check_policy(policy)
    first, last = as_utc(start), as_utc(end)
    if first >= last:
        raise UserInputError(f"start {first:%Y-%m-%d %H:%M} must be before end {last:%Y-%m-%d %H:%M}")
    Timeframe.parse(timeframe)
    if fast is not None and slow is not None and fast >= slow:
        raise UserInputError(f"--fast ({fast}) must be below --slow ({slow})")
    folder_bars(data_dir, symbols, timeframe, first, last)  # the folder, its symbols, bars in the range

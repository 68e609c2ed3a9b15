"""Data-quality check on computed features: nothing undefined once an indicator is warm."""

from __future__ import annotations

import polars as pl

from crypto_pipeline.features import warmup_bars
from crypto_pipeline.market.clean import SAMPLE_ROWS, CheckResult


def check_warm_features(features: pl.DataFrame, *, max_null_ratio: float = 0.02) -> CheckResult:
    """Warm rows hold no NaN or infinity, and few nulls.

    `features` is the long table (a `timeframe` column). Only the features of each timeframe's warm-up
    table are judged (`warmup_bars(tf)`: no `ret_1h` on 4h bars, for example). NaN and infinity are never
    allowed: `compute_features` turns undefined values into nulls, so one means a bug. Nulls are allowed
    up to `max_null_ratio` of a column's warm rows, because the time-window features are honestly null
    where a gap in the data breaks their window; more than that means the data or the code is wrong.
    """
    offending: list[dict[str, object]] = []
    checked = 0
    warm = features.filter(pl.col("warm")) if features.height else features
    for (timeframe,), rows in warm.partition_by("timeframe", as_dict=True).items() if warm.height else []:
        for column in warmup_bars(timeframe):
            values = rows[column]
            checked += 1
            non_finite = int((values.is_nan() | values.is_infinite()).sum())
            nulls = values.null_count()
            if non_finite or nulls > max_null_ratio * rows.height:
                offending.append(
                    {"timeframe": timeframe, "feature": column, "warm_rows": rows.height,
                     "nan_or_inf": non_finite, "nulls": nulls}
                )  # fmt: skip
    sample = pl.DataFrame(offending) if offending else pl.DataFrame()
    return CheckResult(
        name="no_nan_after_warmup",
        passed=not offending,
        count=len(offending),
        total=checked,
        description=f"warm features with NaN/inf, or with more than {max_null_ratio:.0%} nulls",
        sample=sample.head(SAMPLE_ROWS),
    )

"""The data-quality checks of the pipeline, in one place: each check's name, the table it guards, its
description and the function that computes it.

Every check returns a `CheckResult` (passed, how many rows or series offend out of how many checked, a
few sample rows). A check receives what it audits as arguments (the rows, and for the feature and state
checks the warm-up table or the builder under audit): it imports no builder, so every builder can import
its checks. The Dagster layer builds its blocking asset-check specs from `QUALITY_CHECKS` and turns
each `CheckResult` into an asset-check result, so a name or a description is written here only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

import polars as pl

from crypto_pipeline.leakage import LookaheadError, assert_no_lookahead
from crypto_pipeline.market.clean import gap_report
from crypto_pipeline.market.schema import OHLCV_COLUMNS, PRICE_COLUMNS
from crypto_pipeline.market.timeframes import Timeframe

SAMPLE_ROWS = 5


@dataclass(frozen=True)
class QualityCheck:
    """A named check of one table (`asset`): what the Dagster UI and every `CheckResult` call it."""

    name: str
    asset: str
    description: str


UNIQUE_KEY = QualityCheck(
    "unique_symbol_timestamp", "bars", "No two bars share (symbol, timeframe, timestamp)."
)
OHLC_CONSISTENT = QualityCheck(
    "ohlc_consistent",
    "bars",
    "Prices are finite and > 0, low <= open, close <= high, and volume >= 0.",
)
MONOTONIC_TIME = QualityCheck(
    "monotonic_time", "bars", "Timestamps strictly increase within each symbol and timeframe."
)
GAP_RATIO = QualityCheck(
    "gap_ratio", "bars", "Each series misses at most max_gap_ratio of its expected base bars."
)
WARM_FEATURES = QualityCheck(
    "no_nan_after_warmup",
    "features",
    "Warm features hold no NaN or inf, and nulls (gap-broken windows) stay under max_null_ratio.",
)
NO_LOOKAHEAD = QualityCheck(
    "no_lookahead",
    "market_states",
    "States rebuilt from only the bars closed by a sampled cut time equal the stored ones up to that cut.",
)

QUALITY_CHECKS: tuple[QualityCheck, ...] = (
    UNIQUE_KEY,
    OHLC_CONSISTENT,
    MONOTONIC_TIME,
    GAP_RATIO,
    WARM_FEATURES,
    NO_LOOKAHEAD,
)


def checks_for(asset: str) -> list[QualityCheck]:
    """The checks that guard one table, in a stable order."""
    return [check for check in QUALITY_CHECKS if check.asset == asset]


@dataclass(frozen=True)
class CheckResult:
    """One data-quality check: whether it passed, how many rows (or series) offend, a small sample."""

    name: str
    passed: bool
    count: int
    total: int
    description: str
    sample: pl.DataFrame = field(default_factory=pl.DataFrame)

    @classmethod
    def of(
        cls, check: QualityCheck, offending: int, total: int, sample: pl.DataFrame | None = None
    ) -> CheckResult:
        sample = pl.DataFrame() if sample is None else sample.head(SAMPLE_ROWS)
        return cls(check.name, offending == 0, offending, total, check.description, sample)

    def sample_records(self) -> list[dict[str, str | None]]:
        """The sample as JSON-safe records (every value rendered as text)."""
        return [{k: None if v is None else str(v) for k, v in row.items()} for row in self.sample.to_dicts()]


@dataclass(kw_only=True)
class CheckedReport:
    """What a builder (`build_features`, `build_market_states`) did over whole days, with the data-quality
    checks of the rows it built; the Dagster layer turns `checks` into asset-check results."""

    symbols: list[str]
    first_day: date
    last_day: date  # included
    seconds: float = 0.0
    checks: list[CheckResult] = field(default_factory=list)


# --- bars ------------------------------------------------------------------------------------------


def _series_keys(df: pl.DataFrame) -> list[str]:
    return ["symbol", "timeframe"] if "timeframe" in df.columns else ["symbol"]


def check_unique(df: pl.DataFrame, keys: Sequence[str] | None = None) -> CheckResult:
    """No two rows share (symbol, [timeframe,] timestamp)."""
    keys = list(keys) if keys is not None else [*_series_keys(df), "timestamp"]
    dup = df.filter(pl.struct(keys).is_duplicated()) if df.height else df
    return CheckResult.of(UNIQUE_KEY, dup.height, df.height, dup.sort(keys))


def check_ohlc(df: pl.DataFrame) -> CheckResult:
    """Every price is finite and > 0, low <= min(open, close), max(open, close) <= high, volume >= 0."""
    ok = (
        pl.all_horizontal([pl.col(c).is_finite().fill_null(False) for c in OHLCV_COLUMNS])
        & pl.all_horizontal([pl.col(c) > 0 for c in PRICE_COLUMNS])
        & (pl.col("low") <= pl.min_horizontal("open", "close"))
        & (pl.max_horizontal("open", "close") <= pl.col("high"))
        & (pl.col("volume") >= 0)
    ).fill_null(False)
    bad = df.filter(~ok)
    return CheckResult.of(OHLC_CONSISTENT, bad.height, df.height, bad)


def check_monotonic(df: pl.DataFrame) -> CheckResult:
    """Within each series, timestamps strictly increase in row order (no repeats, nothing out of order)."""
    keys = _series_keys(df)
    not_after = pl.col("timestamp") <= pl.col("timestamp").shift(1).over(keys)
    bad = df.filter(not_after.fill_null(False)) if df.height else df
    return CheckResult.of(MONOTONIC_TIME, bad.height, df.height, bad)


def check_gaps(
    df: pl.DataFrame,
    timeframe: str | Timeframe | None = None,
    *,
    max_gap_ratio: float = 0.02,
    start: datetime | None = None,
    end: datetime | None = None,
) -> CheckResult:
    """Each series misses at most `max_gap_ratio` of its expected bars over [start, end) (see `gap_report`)."""
    report = gap_report(df, timeframe, start=start, end=end)
    over = report.filter(pl.col("gap_ratio") > max_gap_ratio).sort("gap_ratio", descending=True)
    sample = over if not over.is_empty() else report.sort("gap_ratio", descending=True)
    return CheckResult.of(GAP_RATIO, over.height, report.height, sample)


def check_bars(
    df: pl.DataFrame, base_timeframe: str, *, max_gap_ratio: float, start: datetime, end: datetime
) -> list[CheckResult]:
    """Every check of `bars` on the rows built over [start, end); gaps are judged on the base timeframe."""
    base = df.filter(pl.col("timeframe") == base_timeframe)
    return [
        check_unique(df),
        check_ohlc(df),
        check_monotonic(df),
        check_gaps(base, base_timeframe, max_gap_ratio=max_gap_ratio, start=start, end=end),
    ]


# --- features --------------------------------------------------------------------------------------


def check_warm_features(
    features: pl.DataFrame,
    warm_columns: Callable[[str], Iterable[str]],
    *,
    max_null_ratio: float = 0.02,
) -> CheckResult:
    """Warm rows hold no NaN or infinity, and few nulls.

    `features` is the long table (a `timeframe` column). Only the features `warm_columns(timeframe)`
    names are judged (the builder passes its warm-up table, `features.warmup_bars`: no `ret_1h` on 4h
    bars, for example). NaN and infinity are never
    allowed: `compute_features` turns undefined values into nulls, so one means a bug. Nulls are allowed
    up to `max_null_ratio` of a column's warm rows, because the time-window features are honestly null
    where a gap in the data breaks their window; more than that means the data or the code is wrong.
    """
    offending: list[dict[str, object]] = []
    checked = 0
    warm = features.filter(pl.col("warm")) if features.height else features
    for (timeframe,), rows in warm.partition_by("timeframe", as_dict=True).items() if warm.height else []:
        for column in warm_columns(timeframe):
            values = rows[column]
            checked += 1
            non_finite = int((values.is_nan() | values.is_infinite()).sum())
            nulls = values.null_count()
            if non_finite or nulls > max_null_ratio * rows.height:
                offending.append(
                    {"timeframe": timeframe, "feature": column, "warm_rows": rows.height,
                     "nan_or_inf": non_finite, "nulls": nulls}
                )  # fmt: skip
    return CheckResult.of(WARM_FEATURES, len(offending), checked, pl.DataFrame(offending))


# --- market states ---------------------------------------------------------------------------------

StateBuilder = Callable[[pl.DataFrame, pl.DataFrame], pl.DataFrame]
BAR_CLOSE = "_bar_close"  # the audit's cut column: when each feature row became known


def check_no_lookahead(
    features: pl.DataFrame,
    points: pl.DataFrame,
    *,
    build: StateBuilder,
    cuts: int = 3,
) -> CheckResult:
    """`leakage.assert_no_lookahead` on the state builder, at `cuts` decision times spread over `points`.

    At each cut time t the states are rebuilt from only the feature rows whose bar had closed by t; every
    state at or before t must come out identical (nulls included) to the one built from all rows. A
    builder that reads even one bar past its decision time fails. `build(features, points)` is the builder
    under audit (`state.build.market_state_table` in the pipeline); `points` are the (symbol, at) decision
    points.
    """
    times = points["at"].unique().sort()
    if features.is_empty() or times.is_empty():
        return CheckResult.of(NO_LOOKAHEAD, 0, 0)
    # Spread over the range, last decision time included: that is where a peek has the most to find.
    picks = sorted({round(i * (times.len() - 1) / max(cuts - 1, 1)) for i in range(cuts)})
    cut_times = [times[i] for i in picks]
    durations = {tf.value: tf.duration for tf in Timeframe}
    known = features.with_columns(
        (
            pl.col("timestamp")
            + pl.col("timeframe").replace_strict(durations, return_dtype=pl.Duration("us"))
        ).alias(BAR_CLOSE)
    )
    full_schema = build(known, points).schema

    def states(rows: pl.DataFrame) -> pl.DataFrame:
        # A timeframe with no closed bar yet gives no columns at all: line them up as nulls.
        out = build(rows, points)
        return out.select(
            pl.col(n) if n in out.columns else pl.lit(None, dtype).alias(n)
            for n, dtype in full_schema.items()
        )

    failures: list[dict[str, str]] = []
    for cut in cut_times:
        try:
            assert_no_lookahead(
                states, known, [cut], time_column=BAR_CLOSE, key_columns=("symbol", "at"),
                output_time_column="at",
            )  # fmt: skip
        except LookaheadError as error:
            failures.append({"cut": str(cut), "error": str(error)})
    return CheckResult.of(NO_LOOKAHEAD, len(failures), len(cut_times), pl.DataFrame(failures))

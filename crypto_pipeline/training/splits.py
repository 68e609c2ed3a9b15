"""Time splits that cannot leak: train < validation < test by decision time, each boundary purged and
embargoed (López de Prado, *Advances in Financial Machine Learning*, ch. 7).

An example decided at `at` has a label window [at, label_end]. At a boundary B between two splits:
- purge: an example of the earlier split whose label window reaches past B is dropped (its label would
  be made of prices the later split's examples are decided on);
- embargo: an example of the later split decided before B + embargo is dropped (its features overlap the
  earlier split's last label windows: serially correlated returns would leak the other way).
The embargo must be at least the label horizon. The last boundary is the cutoff: no label may end after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl

from crypto_pipeline.quality import SAMPLE_ROWS, CheckResult

SPLITS: tuple[str, ...] = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitBoundaries:
    """train: labels end by `train_end`; validation: decided from `train_end + embargo`, labels end by
    `val_end`; test: decided from `val_end + embargo`, labels end by `cutoff`."""

    train_end: datetime
    val_end: datetime
    cutoff: datetime
    embargo: timedelta

    def __post_init__(self) -> None:
        if not self.train_end < self.val_end < self.cutoff:
            raise ValueError(
                f"need train_end < val_end < cutoff, got {self.train_end}, {self.val_end}, {self.cutoff}"
            )

    @classmethod
    def rolling(
        cls, end: datetime, *, val_days: float, test_days: float, embargo: timedelta
    ) -> SplitBoundaries:
        """The last `test_days` before `end` are test, the `val_days` before them validation."""
        val_end = end - timedelta(days=test_days)
        return cls(train_end=val_end - timedelta(days=val_days), val_end=val_end, cutoff=end, embargo=embargo)

    def as_dict(self) -> dict[str, str]:
        return {
            "train_end": self.train_end.isoformat(),
            "val_end": self.val_end.isoformat(),
            "cutoff": self.cutoff.isoformat(),
            "embargo": str(self.embargo),
        }


@dataclass
class SplitReport:
    """How many examples each rule removed, and the period each split covers."""

    kept: dict[str, int] = field(default_factory=dict)
    purged: int = 0
    embargoed: int = 0
    after_cutoff: int = 0


def assign_splits(
    examples: pl.DataFrame, boundaries: SplitBoundaries, horizon: timedelta
) -> tuple[pl.DataFrame, SplitReport]:
    """`examples` (with `at` and `label_end`) with a `split` column; purged, embargoed and post-cutoff rows
    are removed. Raises if the embargo is shorter than the label horizon."""
    if boundaries.embargo < horizon:
        raise ValueError(f"the embargo ({boundaries.embargo}) must be at least the label horizon ({horizon})")
    b = boundaries
    at, end = pl.col("at"), pl.col("label_end")
    split = (
        pl.when(end > b.cutoff)
        .then(pl.lit("after_cutoff"))
        .when(at < b.train_end)
        .then(pl.when(end <= b.train_end).then(pl.lit("train")).otherwise(pl.lit("purged")))
        .when(at < b.train_end + b.embargo)
        .then(pl.lit("embargoed"))
        .when(at < b.val_end)
        .then(pl.when(end <= b.val_end).then(pl.lit("validation")).otherwise(pl.lit("purged")))
        .when(at < b.val_end + b.embargo)
        .then(pl.lit("embargoed"))
        .otherwise(pl.lit("test"))
    )
    tagged = examples.with_columns(split.alias("split"))
    counts = dict(tagged.group_by("split").len().iter_rows())
    report = SplitReport(
        kept={name: int(counts.get(name, 0)) for name in SPLITS},
        purged=int(counts.get("purged", 0)),
        embargoed=int(counts.get("embargoed", 0)),
        after_cutoff=int(counts.get("after_cutoff", 0)),
    )
    return tagged.filter(pl.col("split").is_in(SPLITS)), report


def check_no_split_leakage(examples: pl.DataFrame) -> CheckResult:
    """No example's label window reaches the decision time of any example in a later split.

    Compares every earlier split's latest `label_end` with every later split's earliest `at`; the
    offending rows are the earlier split's examples whose label ends at or after that time.
    """
    offending: list[pl.DataFrame] = []
    present = [s for s in SPLITS if examples.filter(pl.col("split") == s).height]
    for i, earlier in enumerate(present):
        rows = examples.filter(pl.col("split") == earlier)
        for later in present[i + 1 :]:
            first_later = examples.filter(pl.col("split") == later)["at"].min()
            bad = rows.filter(pl.col("label_end") >= first_later)
            if bad.height:
                offending.append(
                    bad.select("symbol", "at", "label_end", "split").with_columns(
                        pl.lit(later).alias("overlaps_split"), pl.lit(first_later).alias("later_split_starts")
                    )
                )
    unknown = examples.filter(~pl.col("split").is_in(SPLITS))
    bad_rows = pl.concat(offending) if offending else pl.DataFrame()
    count = bad_rows.height + unknown.height
    return CheckResult(
        name="no_split_leakage",
        passed=count == 0,
        count=count,
        total=examples.height,
        description="examples whose label window reaches a later split's first decision time (or an unknown split)",
        sample=bad_rows.head(SAMPLE_ROWS) if bad_rows.height else unknown.head(SAMPLE_ROWS),
    )

"""Walk-forward folds in time: the out-of-sample windows every policy is judged on, and the training
windows the classical baseline (and a per-fold fine-tune) may learn from.

A fold's training window ends `purge + embargo` before its test window starts. `purge` is at least the
label horizon (a training label computed at t reads prices up to t + horizon, which must not reach into
the test window); `embargo` is an extra gap against serial correlation across the boundary."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from crypto_pipeline.timeutil import as_utc


@dataclass(frozen=True)
class Fold:
    """One walk-forward step; every window is half-open [start, end) in UTC."""

    index: int
    train_start: datetime
    train_end: datetime
    test_start: datetime
    test_end: datetime

    @property
    def key(self) -> str:
        """The fold's Dagster partition key."""
        return f"fold-{self.index:02d}"

    def as_dict(self) -> dict[str, str | int]:
        return {
            "fold": self.key,
            "train_start": self.train_start.isoformat(),
            "train_end": self.train_end.isoformat(),
            "test_start": self.test_start.isoformat(),
            "test_end": self.test_end.isoformat(),
        }


def walk_forward_folds(
    start: datetime | str,
    end: datetime | str,
    *,
    n_folds: int = 4,
    test_window: timedelta | None = None,
    train_window: timedelta | None = None,
    purge: timedelta = timedelta(hours=24),
    embargo: timedelta = timedelta(hours=24),
    training_cutoff: datetime | str | None = None,
) -> list[Fold]:
    """`n_folds` consecutive test windows ending at `end`, each with the training window before it.

    `test_window` defaults to an equal split of the last half of [start, end). `train_window` None means
    expanding windows (training from `start`); a duration means rolling windows of that length.
    `training_cutoff` (a fine-tuned model's last training time) drops every fold whose test window starts
    before `cutoff + purge + embargo`, so a model is never judged on data it was trained on; when that
    drops every fold the list is empty (the promotion gate's honest refusal, not an error).
    Raises ValueError for an empty range or folds that leave no training data.
    """
    first, last = as_utc(start), as_utc(end)
    if first >= last:
        raise ValueError(f"start {first:%Y-%m-%d %H:%M} is not before end {last:%Y-%m-%d %H:%M}")
    if n_folds < 1:
        raise ValueError("n_folds must be at least 1")
    test = test_window or (last - first) / (2 * n_folds)
    gap = purge + embargo
    folds: list[Fold] = []
    for i in range(n_folds):
        test_start = last - (n_folds - i) * test
        train_end = test_start - gap
        train_start = first if train_window is None else max(first, train_end - train_window)
        if train_end <= train_start:
            raise ValueError(
                f"fold {i} leaves no training data: test starts {test_start:%Y-%m-%d}, "
                f"purge+embargo {gap}, data starts {first:%Y-%m-%d}"
            )
        folds.append(Fold(i, train_start, train_end, test_start, test_start + test))
    if training_cutoff is not None:
        earliest = as_utc(training_cutoff) + gap
        folds = [f for f in folds if f.test_start >= earliest]
    return folds


def fold_by_key(folds: list[Fold], key: str) -> Fold:
    for fold in folds:
        if fold.key == key:
            return fold
    raise KeyError(f"unknown fold {key!r}; known: {[f.key for f in folds]}")

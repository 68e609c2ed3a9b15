"""Classification figures with bootstrap 95% intervals, and the paired interval of one model minus another.

The evaluation samples are a few hundred examples, so a point figure alone cannot tell a better model from
a lucky one. Every figure here comes with a percentile bootstrap interval (examples resampled with
replacement, seeded); the paired interval resamples the SAME examples for both models, so what they share
(hard examples, the sample's class mix) cancels out. MLflow gets them under fixed names
(`<name>`, `<name>_ci_low`, `<name>_ci_high`) so its compare view lines the versions up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from crypto_pipeline.llm.decision import Action

ACTIONS: tuple[str, ...] = tuple(a.value for a in Action)
DEFAULT_REPS = 1000


@dataclass(frozen=True)
class Interval:
    """A figure, its 95% interval and the number of examples behind it."""

    value: float
    low: float
    high: float
    n: int

    @property
    def width(self) -> float:
        return self.high - self.low

    def metrics(self, name: str) -> dict[str, float]:
        return {name: self.value, f"{name}_ci_low": self.low, f"{name}_ci_high": self.high}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


def _codes(labels: Sequence[str]) -> np.ndarray:
    """Actions as 0..2 (ACTIONS order); anything else (an invalid answer) as 3, a class of its own."""
    index = {a: i for i, a in enumerate(ACTIONS)}
    return np.array([index.get(x, len(ACTIONS)) for x in labels], dtype=np.int64)


def _confusions(truth: np.ndarray, predicted: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """(reps, 3, 4) confusion counts of every bootstrap sample at once (rows: true action)."""
    k = len(ACTIONS) + 1
    cells = truth[samples] * k + predicted[samples]  # (reps, n)
    counts = np.zeros((samples.shape[0], k * k), dtype=np.int64)
    np.add.at(counts, (np.arange(samples.shape[0])[:, None], cells), 1)
    return counts.reshape(-1, k, k)[:, : len(ACTIONS), :]


def balanced_accuracy_of(conf: np.ndarray) -> np.ndarray:
    """Mean recall over the true classes present (sklearn's `balanced_accuracy_score`), per sample."""
    support = conf.sum(axis=2)
    recall = np.divide(
        conf[:, np.arange(len(ACTIONS)), np.arange(len(ACTIONS))],
        support,
        out=np.zeros(support.shape, dtype=float),
        where=support > 0,
    )
    present = (support > 0).sum(axis=1)
    return recall.sum(axis=1) / np.maximum(present, 1)


def macro_f1_of(conf: np.ndarray) -> np.ndarray:
    """Mean F1 over the three actions (an absent class scores 0, as sklearn's `zero_division=0`)."""
    diag = conf[:, np.arange(len(ACTIONS)), np.arange(len(ACTIONS))].astype(float)
    support = conf.sum(axis=2)
    predicted = conf.sum(axis=1)[:, : len(ACTIONS)]
    denominator = support + predicted
    f1 = np.divide(2 * diag, denominator, out=np.zeros(diag.shape), where=denominator > 0)
    return f1.mean(axis=1)


METRICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "balanced_accuracy": balanced_accuracy_of,
    "macro_f1": macro_f1_of,
}


def _samples(n: int, reps: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(reps, n))


def bootstrap(
    labels: Sequence[str], predicted: Sequence[str], metric: str, *, reps: int = DEFAULT_REPS, seed: int = 0
) -> Interval:
    """`metric` ('balanced_accuracy' or 'macro_f1') of `predicted` against `labels`, with its interval."""
    if len(labels) != len(predicted) or not labels:
        raise ValueError(f"need as many predictions as labels, and some: {len(labels)} vs {len(predicted)}")
    truth, guess = _codes(labels), _codes(predicted)
    whole = METRICS[metric](_confusions(truth, guess, np.arange(len(truth))[None, :]))[0]
    spread = METRICS[metric](_confusions(truth, guess, _samples(len(truth), reps, seed)))
    low, high = np.percentile(spread, [2.5, 97.5])
    return Interval(float(whole), float(low), float(high), len(truth))


def paired_bootstrap(
    labels: Sequence[str],
    predicted_a: Sequence[str],
    predicted_b: Sequence[str],
    metric: str,
    *,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
) -> Interval:
    """`metric` of A minus that of B on the same examples, the interval from resampling them together."""
    if not len(labels) == len(predicted_a) == len(predicted_b) or not labels:
        raise ValueError("need the same examples for both models")
    truth = _codes(labels)
    a, b = _codes(predicted_a), _codes(predicted_b)
    every = np.arange(len(truth))[None, :]
    whole = (
        METRICS[metric](_confusions(truth, a, every))[0] - METRICS[metric](_confusions(truth, b, every))[0]
    )
    samples = _samples(len(truth), reps, seed)
    spread = METRICS[metric](_confusions(truth, a, samples)) - METRICS[metric](_confusions(truth, b, samples))
    low, high = np.percentile(spread, [2.5, 97.5])
    return Interval(float(whole), float(low), float(high), len(truth))

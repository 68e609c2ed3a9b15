"""Bootstrap intervals: the point figures equal sklearn's, the intervals cover them and narrow with n, and
the paired interval sees a real difference that two separate intervals would not."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from crypto_pipeline.training.ceiling import logistic_ceiling
from crypto_pipeline.training.intervals import ACTIONS, bootstrap, paired_bootstrap


def _draw(n: int, accuracy: float, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    labels = [ACTIONS[i] for i in rng.integers(0, 3, n)]
    guesses = [y if rng.random() < accuracy else ACTIONS[rng.integers(0, 3)] for y in labels]
    return labels, guesses


def test_point_figures_are_sklearns_and_an_invalid_answer_is_a_miss() -> None:
    labels, guesses = _draw(300, 0.6, 1)
    guesses[:7] = ["INVALID"] * 7
    ba = bootstrap(labels, guesses, "balanced_accuracy", reps=200)
    f1 = bootstrap(labels, guesses, "macro_f1", reps=200)
    assert ba.value == pytest.approx(balanced_accuracy_score(labels, guesses))
    assert f1.value == pytest.approx(
        f1_score(labels, guesses, labels=list(ACTIONS), average="macro", zero_division=0)
    )
    assert ba.low < ba.value < ba.high and f1.low < f1.value < f1.high
    assert ba.metrics("val_balanced_accuracy").keys() == {
        "val_balanced_accuracy",
        "val_balanced_accuracy_ci_low",
        "val_balanced_accuracy_ci_high",
    }


def test_intervals_narrow_with_more_examples() -> None:
    small = bootstrap(*_draw(60, 0.5, 2), "balanced_accuracy")
    large = bootstrap(*_draw(1500, 0.5, 2), "balanced_accuracy")
    assert large.width < small.width / 2.5  # ~ 1/sqrt(n): sqrt(25) = 5


def test_the_paired_interval_sees_what_separate_intervals_cannot() -> None:
    labels, base = _draw(300, 0.30, 3)
    # The tuned model: the base's answers, corrected on 8% of the examples.
    rng = np.random.default_rng(4)
    tuned = [y if rng.random() < 0.08 else b for y, b in zip(labels, base, strict=True)]
    a, b = bootstrap(labels, tuned, "balanced_accuracy"), bootstrap(labels, base, "balanced_accuracy")
    assert a.low < b.high  # the separate intervals overlap...
    diff = paired_bootstrap(labels, tuned, base, "balanced_accuracy")
    assert diff.value == pytest.approx(a.value - b.value)
    assert diff.low > 0  # ...the paired one is above zero
    same = paired_bootstrap(labels, base, base, "balanced_accuracy")
    assert same.value == same.low == same.high == 0


def test_the_ceiling_learns_a_signal_the_numbers_carry_and_not_one_they_do_not() -> None:
    rng = np.random.default_rng(5)
    n = 900
    signal = rng.normal(size=n)
    noise = rng.normal(size=n)
    states = pl.DataFrame(
        {
            "symbol": ["X"] * n,
            "at": list(range(n)),
            "rsi_14_1h": signal,
            "atr_pct_1h": noise,
            "price": signal * 1e4,
        }
    )
    learnable = np.where(signal > 0.4, "BUY", np.where(signal < -0.4, "SELL", "HOLD"))
    split = ["train"] * 600 + ["validation"] * 300
    frame = pl.DataFrame({"symbol": ["X"] * n, "at": list(range(n)), "split": split, "action": learnable})
    scored = {"validation": frame.filter(pl.col("split") == "validation")}
    ceiling = logistic_ceiling(frame, states, scored)
    assert "price" not in ceiling.columns and ceiling.train_examples == 600
    assert ceiling.balanced_accuracy["validation"].low > 0.8
    random = frame.with_columns(pl.Series("action", [ACTIONS[i] for i in rng.integers(0, 3, n)]))
    none = logistic_ceiling(random, states, {"validation": random.filter(pl.col("split") == "validation")})
    assert none.balanced_accuracy["validation"].low < 1 / 3 < none.balanced_accuracy["validation"].high
    assert set(ceiling.metrics()) == {
        "logreg_val_balanced_accuracy",
        "logreg_val_balanced_accuracy_ci_low",
        "logreg_val_balanced_accuracy_ci_high",
    }

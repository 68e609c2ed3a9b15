"""Scoring and the fine-tuned model's checks on hand-made answers with known figures: both checks fail
when their condition does not hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from crypto_pipeline.llm.decision import Action, TradeDecision
from crypto_pipeline.training.evaluate import model_checks, score


def rows(labels: list[str]) -> pl.DataFrame:
    start = datetime(2024, 6, 1, tzinfo=UTC)
    return pl.DataFrame(
        {
            "symbol": ["BTC/USDT"] * len(labels),
            "at": [start + timedelta(hours=i) for i in range(len(labels))],
            "action": labels,
        }
    )


def test_score_known_figures_and_invalid_answers_are_misses() -> None:
    labels = ["BUY", "BUY", "SELL", "SELL", "HOLD", "HOLD"]
    said = ["BUY", "SELL", "SELL", "SELL", "HOLD", "HOLD"]
    decisions = [TradeDecision(action=Action(a), confidence=60) for a in said]
    # The last answer was not valid JSON: the fallback HOLD must not count as a hit.
    decisions[-1] = decisions[-1].model_copy(update={"valid": False})
    ev = score("validation", labels, decisions, rows(labels))
    assert ev.valid_json_rate == pytest.approx(5 / 6)
    assert ev.balanced_accuracy == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)  # recall BUY, SELL, HOLD
    assert ev.confusion == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]  # ACTIONS order BUY, SELL, HOLD
    assert ev.predictions["predicted"].to_list()[-1] == "INVALID"
    assert set(ev.metrics("base_")) == {
        "base_val_valid_json_rate",
        "base_val_balanced_accuracy",
        "base_val_macro_f1",
    }


def test_model_checks_pass_and_fail() -> None:
    good = {"val_valid_json_rate": 1.0, "val_balanced_accuracy": 0.45, "base_val_balanced_accuracy": 0.33}
    assert {name: passed for name, (passed, _) in model_checks(good).items()} == {
        "valid_json_rate": True,
        "beats_base_model": True,
    }
    bad = good | {"val_valid_json_rate": 0.96, "val_balanced_accuracy": 0.33}
    checks = model_checks(bad)
    assert checks["valid_json_rate"] == (False, {"val_valid_json_rate": 0.96})
    assert checks["beats_base_model"][0] is False  # a tie is not a win
    assert checks["beats_base_model"][1]["base_val_balanced_accuracy"] == 0.33

"""The optional teacher: `OpenAICompatible` against a real OpenAI-compatible HTTP server on loopback writes
the reasoning of the train examples it agrees with; the rest keep the rule's sentence; its cost lands in the
dataset card and, through the card saved with the HF dataset, in the MLflow run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from crypto_pipeline.llm.decision import parse_decision
from crypto_pipeline.llm.openai_compat import OpenAICompatible
from crypto_pipeline.training.dataset import (
    DatasetConfig,
    SftDataset,
    build_sft_dataset,
    check_responses_parse,
    save_hf_dataset,
    stored_card,
)

USD_PROMPT, USD_COMPLETION = 0.5, 1.5  # per million tokens


def test_teacher_writes_agreeing_train_reasoning_and_its_cost_is_recorded(
    chat_server: Any,
    btc_states: pl.DataFrame,
    btc_bars_1h: pl.DataFrame,
    btc_dataset: SftDataset,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("TEACHER_TEST_KEY", "sk-teacher-secret")
    teacher = OpenAICompatible(
        chat_server.url,
        "teacher-7b",
        api_key_env="TEACHER_TEST_KEY",
        usd_per_1m_prompt_tokens=USD_PROMPT,
        usd_per_1m_completion_tokens=USD_COMPLETION,
        name="teacher:teacher-7b",
    )
    config = btc_dataset.config.model_copy(update={"teacher_max_examples": 30})
    with teacher:
        taught = build_sft_dataset(btc_states, btc_bars_1h, config, teacher=teacher)

    # Exactly the capped number of calls, all of them train examples, the key only in the header.
    assert len(chat_server.requests) == 30
    train_prompts = set(taught.frame.filter(pl.col("split") == "train")["prompt"].to_list())
    assert all(body["messages"][-1]["content"] in train_prompts for _, body in chat_server.requests)
    assert all(h["Authorization"] == "Bearer sk-teacher-secret" for h, _ in chat_server.requests)

    # Where the teacher agreed with the label, its sentence replaced the rule's; nothing else changed.
    sent = {body["messages"][-1]["content"] for _, body in chat_server.requests}
    plain, frame = btc_dataset.frame, taught.frame
    assert frame.select("symbol", "at", "split", "action", "prompt").equals(
        plain.select("symbol", "at", "split", "action", "prompt")
    )
    expected_teacher = [
        p in sent and chat_server.answer(p)[0] == a
        for p, a in zip(frame["prompt"], frame["action"], strict=True)
    ]
    assert (frame["reasoning_source"] == "teacher").to_list() == expected_teacher
    assert 0 < sum(expected_teacher) < 30  # some agree, some do not: both paths are exercised
    for row, old in zip(frame.iter_rows(named=True), plain["response"], strict=True):
        ours, before = parse_decision(row["response"]), parse_decision(old)
        if row["reasoning_source"] == "teacher":
            assert ours.reasoning == chat_server.answer(row["prompt"])[1]
            assert ours.model_copy(update={"reasoning": ""}) == before.model_copy(update={"reasoning": ""})
        else:
            assert row["response"] == old
    assert check_responses_parse(frame).passed

    # The cost: every call's usage priced, in the card (and its markdown), never the key.
    cost = (
        30 * (chat_server.prompt_tokens * USD_PROMPT + chat_server.completion_tokens * USD_COMPLETION) / 1e6
    )
    card = taught.card()
    assert card["teacher"] == "teacher:teacher-7b" and card["teacher_cost_usd"] == pytest.approx(cost)
    assert card["teacher_calls"] == 30 and card["teacher_rewritten"] == sum(expected_teacher)
    assert f"${cost:.4f}" in taught.card_markdown()
    assert "sk-teacher-secret" not in json.dumps(card, default=str)

    # The card saved with the HF dataset is the one the fine-tune logs to MLflow, cost included; a
    # different frame does not pick up a stale card.
    folder = save_hf_dataset(frame, tmp_path / "hf", card)
    assert stored_card(frame, folder)["teacher_cost_usd"] == pytest.approx(cost)
    assert stored_card(plain, folder)["fingerprint"] != card["fingerprint"]
    assert "teacher_cost_usd" not in stored_card(plain, folder)


def test_teacher_is_off_by_default(btc_dataset: SftDataset) -> None:
    assert set(btc_dataset.frame["reasoning_source"].unique()) == {"rules"}
    card = btc_dataset.card()
    assert card["teacher"] is None and card["teacher_cost_usd"] == 0.0
    from assets.training import SftDatasetConfig, _teacher

    assert _teacher(SftDatasetConfig()) is None
    assert DatasetConfig().teacher_max_examples == 200

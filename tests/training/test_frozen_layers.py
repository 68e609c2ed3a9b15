"""LoRA on the top layers with the lower layers computed once (`frozen_layers.py`), on a real tiny Llama:
the cached path scores what the whole served model scores, training lowers the loss, and one
`train_evaluate_register` logs the curve, the intervals and the references under their fixed names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from crypto_pipeline.config import Settings, get_settings
from crypto_pipeline.llm.action_slot import ACTIONS
from crypto_pipeline.llm.local import LocalLLM
from crypto_pipeline.llm.prompts import SYSTEM_PROMPT
from crypto_pipeline.training.dataset import SftDataset
from crypto_pipeline.training.evaluate import states_for
from crypto_pipeline.training.finetune import FinetuneConfig


@pytest.fixture(scope="module")
def four_layer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer tiny Llama (so there is a lower and a top stack), SmolLM2's tokenizer and template."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from crypto_pipeline.llm.base_model import ensure_base_model
    from tests.tiny_llama import tiny_llama

    tokenizer = AutoTokenizer.from_pretrained(ensure_base_model(get_settings().models_dir))
    config = tiny_llama(tokenizer).config
    config.num_hidden_layers = 4
    import torch

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("four-layer-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_cached_lower_layers_score_what_the_served_model_scores(
    btc_dataset: SftDataset, btc_states: pl.DataFrame, four_layer_dir: Path, tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crypto_pipeline.training.frozen_layers import LayerSplit, train_top_layers

    tokenizer = AutoTokenizer.from_pretrained(four_layer_dir)
    model = AutoModelForCausalLM.from_pretrained(four_layer_dir)
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        layers_to_transform=[2, 3],
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "v_proj", "down_proj"],
    )
    peft_model = get_peft_model(model, lora)
    split = LayerSplit(peft_model, tokenizer, 2, SYSTEM_PROMPT)
    frame = btc_dataset.frame
    train = frame.filter(pl.col("split") == "train").head(40)
    val = frame.filter(pl.col("split") == "validation").head(10)
    scored = split.encode_for_scoring(val["prompt"].to_list(), batch_size=4)
    encoded = split.encode_for_training(
        train["prompt"].to_list(), train["response"].to_list(), 5.0, batch_size=7
    )
    assert len(encoded) == 40 and len({s.shape[0] for s in encoded.states}) > 1  # each keeps its own length
    losses, curve = train_top_layers(
        split,
        encoded,
        scored,
        val["action"].to_list(),
        epochs=4,
        batch_size=8,
        learning_rate=2e-2,
        warmup_steps=1,
        seed=0,
        curve_every=80,
    )
    assert np.mean([v for _, v in losses[-3:]]) < np.mean([v for _, v in losses[:3]]) - 0.2
    assert [p.examples_seen for p in curve] == [0, 80, 160]
    tuned = split.action_probabilities(scored)
    base = split.action_probabilities(scored, adapter=False)
    assert tuned.shape == (10, 3) and np.allclose(tuned.sum(axis=1), 1)
    assert np.abs(tuned - base).max() > 1e-3  # the adapter moved the action's distribution
    # The serving path: the adapter merged into the whole model, one forward pass per prompt, left padding
    # and the shared system-prompt cache. It scores what the split scored.
    states = states_for(val, btc_states)
    for probs, llm in (
        (tuned, LocalLLM.from_objects(peft_model.merge_and_unload(), tokenizer, model_id="t", batch_size=3)),
        (base, LocalLLM(four_layer_dir, batch_size=4)),
    ):
        served = np.array([[p[a] for a in ACTIONS] for p in llm.action_probabilities(states)])
        assert np.abs(served - probs).max() < 1e-3


def test_one_call_trains_on_the_cache_and_logs_curve_intervals_and_references(
    btc_dataset: SftDataset, btc_states: pl.DataFrame, four_layer_dir: Path, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from crypto_pipeline.training.pipeline import train_evaluate_register

    settings = Settings(mlruns_dir=tmp_path / "mlruns")
    config = FinetuneConfig(
        base_model=str(four_layer_dir),
        load_in_4bit=False,
        lora_layers=2,
        lora_r=4,
        lora_alpha=8,
        cache_lower_layers=True,
        max_train_examples=30,
        max_steps=None,
        epochs=2,
        batch_size=6,
        warmup_steps=1,
        action_loss_weight=4.0,
        curve_points=2,
    )
    lines: list[str] = []
    outcome = train_evaluate_register(
        btc_dataset.frame,
        btc_states,
        config,
        output_dir=tmp_path / "run",
        models_dir=get_settings().models_dir,
        tracking_uri=settings.mlflow_tracking_uri,
        dataset_card=btc_dataset.card(),
        eval_size=15,
        generate_size=3,
        log_line=lines.append,
    )
    assert [n for n, _ in outcome.result.curve] == [0, 30, 60]
    assert outcome.curve_plot is not None and outcome.curve_plot.is_file()
    m = outcome.metrics
    for name in (
        "val_balanced_accuracy",
        "test_balanced_accuracy",
        "val_macro_f1",
        "base_val_balanced_accuracy",
        "tuned_minus_base_val_balanced_accuracy",
        "tuned_minus_base_test_balanced_accuracy",
        "logreg_val_balanced_accuracy",
        "logreg_test_balanced_accuracy",
    ):
        assert m[f"{name}_ci_low"] <= m[name] <= m[f"{name}_ci_high"], name
    assert m["tuned_minus_base_val_balanced_accuracy"] == pytest.approx(
        m["val_balanced_accuracy"] - m["base_val_balanced_accuracy"]
    )
    assert m["val_generated_examples"] == 3 and 0 <= m["val_action_agreement"] <= 1
    assert m["val_valid_json_rate"] == 1.0  # constrained decoding
    assert abs(m["val_share_buy"] + m["val_share_sell"] + m["val_share_hold"] - 1) < 1e-9
    assert any("lower 2 layers computed once" in line for line in lines)
    run = MlflowClient(settings.mlflow_tracking_uri).get_run(outcome.registered.run_id)
    assert run.data.metrics["val_balanced_accuracy_ci_low"] == pytest.approx(
        m["val_balanced_accuracy_ci_low"]
    )
    curve = MlflowClient(settings.mlflow_tracking_uri).get_metric_history(
        run.info.run_id, "curve_val_balanced_accuracy"
    )
    assert [p.step for p in curve] == [0, 30, 60]
    # The registered adapter is an ordinary peft adapter of the whole model: LocalLLM decides with it.
    llm = LocalLLM(four_layer_dir, adapter=outcome.registered.uri, settings=settings, batch_size=2)
    decided = llm.decide(
        states_for(btc_dataset.frame.filter(pl.col("split") == "validation").head(2), btc_states)
    )
    assert all(d.valid for d in decided)


def test_the_anonymized_audit_scores_a_local_model_instead_of_generating(
    btc_dataset: SftDataset, btc_states: pl.DataFrame, four_layer_dir: Path
) -> None:
    from crypto_pipeline.backtest.audits import anonymized_audit
    from crypto_pipeline.llm.action_slot import scored_action
    from crypto_pipeline.llm.prompts import anonymized

    states = states_for(btc_dataset.frame.filter(pl.col("split") == "validation").head(6), btc_states)
    llm = LocalLLM(four_layer_dir, batch_size=6)
    result = anonymized_audit(llm, states)
    assert "scored from one forward pass" in result.detail
    plain = [scored_action(p) for p in llm.action_probabilities(states)]
    hidden = [scored_action(p) for p in llm.action_probabilities([anonymized(s) for s in states])]
    assert result.figures["disagreement"] == pytest.approx(np.mean([a != b for a, b in zip(plain, hidden, strict=True)]))

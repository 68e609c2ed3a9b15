"""A real QLoRA fine-tune (bitsandbytes 4-bit NF4 base + peft LoRA + trl SFTTrainer) on a tiny Llama: it
registers in a temporary MLflow as `crypto-policy@challenger` and LocalLLM loads it back from there; it
resumes after an interruption; it stops with clear errors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from crypto_pipeline.cli import app
from crypto_pipeline.config import Settings, get_settings
from crypto_pipeline.llm.base_model import BaseModelUnavailableError
from crypto_pipeline.llm.local import LocalLLM
from crypto_pipeline.training.dataset import DatasetError, SftDataset
from crypto_pipeline.training.evaluate import MajorityClass, evaluate, evaluation_rows, states_for
from crypto_pipeline.training.finetune import FinetuneConfig, finetune
from crypto_pipeline.training.registry import list_versions, log_and_register

TINY = {"lora_r": 4, "lora_alpha": 8, "batch_size": 2, "warmup_steps": 0, "max_train_examples": 12}


def tiny_config(base: Path, **kwargs: Any) -> FinetuneConfig:
    return FinetuneConfig(base_model=str(base), **(TINY | {"max_steps": 2, "save_steps": 1} | kwargs))


def test_qlora_registers_challenger_and_loads_back(
    btc_dataset: SftDataset, btc_states: pl.DataFrame, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    lines: list[str] = []
    result = finetune(
        btc_dataset.frame,
        tiny_config(tiny_llama_dir),
        tmp_path / "run",
        models_dir=get_settings().models_dir,
        log_line=lines.append,
    )
    assert result.steps == 2 and len(result.losses) == 2 and all(loss > 0 for _, loss in result.losses)
    assert result.tokens_seen > 0 and result.train_examples == 12
    assert any("QLoRA 4-bit NF4" in line for line in lines) and any("loss" in line for line in lines)
    assert (result.adapter_dir / "adapter_config.json").is_file()

    rows = evaluation_rows(btc_dataset.frame, "validation", size=6)
    states = states_for(rows, btc_states)
    majority = evaluate(MajorityClass.from_train(btc_dataset.frame), rows, states, "validation")
    assert majority.valid_json_rate == 1.0 and majority.balanced_accuracy == pytest.approx(1 / 3)

    settings = Settings(mlruns_dir=tmp_path / "mlruns")
    registered = log_and_register(
        settings.mlflow_tracking_uri,
        result,
        dataset_frame=btc_dataset.frame,
        dataset_card=btc_dataset.card(),
        metrics=majority.metrics("majority_"),
    )
    assert registered.uri == "models:/crypto-policy@challenger" and registered.version == "1"
    versions = list_versions(settings.mlflow_tracking_uri)
    assert versions["aliases"].to_list() == ["challenger"]
    assert versions["majority_val_balanced_accuracy"][0] == pytest.approx(1 / 3)
    shown = CliRunner().invoke(app, ["models"], env={"CRYPTO_PIPELINE_MLRUNS_DIR": str(settings.mlruns_dir)})
    assert shown.exit_code == 0, shown.output
    assert "challenger" in shown.output and "crypto-policy" in shown.output

    # The decision layer loads exactly what was registered, in 4-bit as trained, and decides validly.
    llm = LocalLLM(
        tiny_llama_dir, adapter=registered.uri, load_in_4bit=True, settings=settings, max_new_tokens=200
    )
    tuned = evaluate(llm, rows, states, "validation")
    assert tuned.valid_json_rate == 1.0  # constrained decoding
    assert tuned.predictions["valid"].all() and len(tuned.confusion) == 3
    from peft import PeftModel

    assert isinstance(llm.model, PeftModel)


def test_resumes_after_an_interruption(btc_dataset: SftDataset, tiny_llama_dir: Path, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    class StopAfterFirstStep(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
            control.should_training_stop = True
            return control

    config = tiny_config(tiny_llama_dir, max_steps=3)
    models = get_settings().models_dir
    first = finetune(btc_dataset.frame, config, tmp_path, models_dir=models, callbacks=[StopAfterFirstStep()])
    assert first.steps == 1 and (tmp_path / "checkpoints" / "checkpoint-1").is_dir()
    second = finetune(btc_dataset.frame, config, tmp_path, models_dir=models)
    assert second.resumed_from is not None and second.resumed_from.endswith("checkpoint-1")
    assert second.steps == 3
    # The loss history comes back with the checkpoint: one curve over the whole run.
    assert [s for s, _ in second.losses] == [1, 2, 3]
    assert second.losses[0] == first.losses[0]
    # Another config never resumes the old checkpoints.
    other = finetune(btc_dataset.frame, tiny_config(tiny_llama_dir, max_steps=1), tmp_path, models_dir=models)
    assert other.resumed_from is None and other.steps == 1


def test_clear_errors(btc_dataset: SftDataset, tiny_llama_dir: Path, tmp_path: Path) -> None:
    models = get_settings().models_dir
    with pytest.raises(BaseModelUnavailableError, match="not found"):
        finetune(btc_dataset.frame, tiny_config(tmp_path / "nowhere"), tmp_path, models_dir=models)
    with pytest.raises(BaseModelUnavailableError, match="cache"):
        finetune(btc_dataset.frame, tiny_config(Path("nobody/no-model")), tmp_path, models_dir=models)
    early = tiny_config(tiny_llama_dir, training_cutoff=datetime(2020, 1, 1, tzinfo=UTC))
    with pytest.raises(DatasetError, match="no training examples"):
        finetune(btc_dataset.frame, early, tmp_path, models_dir=models)
    no_buy = btc_dataset.frame.filter(pl.col("action") != "BUY")
    with pytest.raises(DatasetError, match="lack the class.*BUY"):
        finetune(no_buy, tiny_config(tiny_llama_dir), tmp_path, models_dir=models)


def test_cli_finetune_without_a_dataset_says_what_to_do(tmp_path: Path) -> None:
    env = {"CRYPTO_PIPELINE_WAREHOUSE_DIR": str(tmp_path / "wh"), "CRYPTO_PIPELINE_MLRUNS_DIR": str(tmp_path)}
    result = CliRunner().invoke(app, ["finetune", "--max-steps", "1"], env=env)
    assert result.exit_code == 2 and "no sft_dataset" in result.output
    empty = CliRunner().invoke(app, ["models"], env=env)
    assert empty.exit_code == 0 and "no versions of crypto-policy" in empty.output


def test_lora_on_the_last_layers_only(btc_dataset: SftDataset, tiny_llama_dir: Path, tmp_path: Path) -> None:
    import json

    from safetensors.torch import load_file

    config = tiny_config(tiny_llama_dir, max_steps=1, lora_layers=1, load_in_4bit=False)
    result = finetune(btc_dataset.frame, config, tmp_path, models_dir=get_settings().models_dir)
    adapter = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter["layers_to_transform"] == [1]  # the tiny Llama has layers 0 and 1
    names = load_file(str(result.adapter_dir / "adapter_model.safetensors")).keys()
    assert names and all(".layers.1." in name for name in names)

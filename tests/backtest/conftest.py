"""A real registered version of `crypto-policy` for the gate's end-to-end tests: the training tests' tiny
Llama fine-tuned (QLoRA, 2 steps) on real BTC/USDT states and registered as `challenger` in a temp MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.conftest import (  # noqa: F401 - fixtures reused, not copied
    btc_bars_1h,
    btc_dataset,
    btc_features,
    btc_states,
    tiny_llama_dir,
)


@pytest.fixture(scope="session")
def registered_challenger(btc_dataset, tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201, F811
    """(mlruns dir, RegisteredVersion) with version 1 as `challenger`, trained on a tiny Llama."""
    from crypto_pipeline.config import Settings, get_settings
    from crypto_pipeline.training.finetune import FinetuneConfig, finetune
    from crypto_pipeline.training.registry import log_and_register

    root = tmp_path_factory.mktemp("registered")
    config = FinetuneConfig(
        base_model=str(tiny_llama_dir),
        lora_r=4,
        lora_alpha=8,
        batch_size=2,
        warmup_steps=0,
        max_train_examples=12,
        max_steps=2,
        save_steps=1,
    )
    result = finetune(btc_dataset.frame, config, root / "run", models_dir=get_settings().models_dir)
    mlruns = root / "mlruns"
    registered = log_and_register(
        Settings(mlruns_dir=mlruns).mlflow_tracking_uri,
        result,
        dataset_frame=btc_dataset.frame,
        dataset_card=btc_dataset.card(),
    )
    return mlruns, registered

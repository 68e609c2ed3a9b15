"""The training assets materialize on a warehouse holding real recorded states: sft_dataset passes its four
blocking checks, and finetuned_model (tiny Llama base, one step) registers crypto-policy@challenger."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from assets.features import features, market_states
from assets.resources import WarehouseResource
from assets.training import MlflowResource, finetuned_model, sft_dataset
from crypto_pipeline.config import Settings
from crypto_pipeline.training.dataset import COLUMNS, read_sft_dataset
from crypto_pipeline.training.registry import list_versions
from crypto_pipeline.warehouse import Warehouse


def stored_warehouse(root: Path, states: pl.DataFrame, feats: pl.DataFrame, bars: pl.DataFrame) -> Warehouse:
    wh = Warehouse(root)
    wh.upsert("bars", bars.with_columns(pl.lit("1h").alias("timeframe")))
    wh.upsert("features", feats)
    wh.upsert(
        "market_states",
        states.filter(pl.col("price").is_not_null()).with_columns(
            (pl.col("at") - timedelta(hours=1)).alias("timestamp"), pl.lit("1h").alias("timeframe")
        ),
    )
    wh.refresh_views()
    return wh


def test_training_assets_materialize(
    tmp_path: Path,
    btc_states: pl.DataFrame,
    btc_features: pl.DataFrame,
    btc_bars_1h: pl.DataFrame,
    tiny_llama_dir: Path,
    chat_server: Any,
) -> None:
    wh = stored_warehouse(tmp_path / "wh", btc_states, btc_features, btc_bars_1h)
    settings = Settings(mlruns_dir=tmp_path / "mlruns")
    result = dg.materialize(
        [sft_dataset, finetuned_model, features.to_source_asset(), market_states.to_source_asset()],
        resources={
            "warehouse": WarehouseResource(root=str(wh.root)),
            "mlflow": MlflowResource(tracking_uri=settings.mlflow_tracking_uri),
        },
        run_config={
            "ops": {
                "sft_dataset": {
                    "config": {
                        "val_days": 10,
                        "test_days": 10,
                        "lookahead_sample": 6,
                        # the optional teacher, on a real OpenAI-compatible endpoint on loopback
                        "teacher_url": chat_server.url,
                        "teacher_model": "teacher-7b",
                        "teacher_usd_per_1m_prompt_tokens": 1.0,
                        "teacher_max_examples": 8,
                    }
                },
                "finetuned_model": {
                    "config": {
                        "base_model": str(tiny_llama_dir),
                        "max_steps": 1,
                        "batch_size": 2,
                        "lora_r": 4,
                        "lora_alpha": 8,
                        "max_train_examples": 6,
                        "eval_size": 3,
                    }
                },
            }
        },
        raise_on_error=False,
    )
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert {k: checks[k] for k in ("responses_parse", "no_split_leakage", "classes_in_every_split")} == {
        "responses_parse": True,
        "no_split_leakage": True,
        "classes_in_every_split": True,
    }
    assert checks["prompts_point_in_time"] is True
    assert checks["valid_json_rate"] is True  # constrained decoding: always valid JSON
    assert "beats_base_model" in checks  # a warning either way on a one-step tiny model
    assert result.success
    stored = read_sft_dataset(wh)
    assert stored.columns == list(COLUMNS) and stored.height > 1000
    assert (Path(wh.root) / "datasets" / "sft_dataset" / "dataset_dict.json").is_file()
    meta = result.asset_materializations_for_node("finetuned_model")[0].metadata
    assert meta["registered"].value == "models:/crypto-policy@challenger"
    assert "base_val_balanced_accuracy" in meta and "majority_val_balanced_accuracy" in meta
    versions = list_versions(settings.mlflow_tracking_uri)
    assert versions["aliases"].to_list() == ["challenger"]
    # The teacher's cost travels from the dataset card to the MLflow run (metric, param and card).
    cost = 8 * chat_server.prompt_tokens * 1.0 / 1e6
    assert len(chat_server.requests) == 8
    assert result.asset_materializations_for_node("sft_dataset")[0].metadata["teacher_cost_usd"].value == (
        pytest.approx(cost)
    )
    from mlflow import MlflowClient

    mc = MlflowClient(settings.mlflow_tracking_uri)
    run = mc.get_run(versions["run_id"][0])
    assert run.data.metrics["dataset_teacher_cost_usd"] == pytest.approx(cost)
    assert run.data.params["teacher"] == "teacher:teacher-7b"
    card = json.loads(
        Path(mc.download_artifacts(run.info.run_id, "dataset/card.json", str(tmp_path))).read_text()
    )
    assert card["teacher_cost_usd"] == pytest.approx(cost) and card["teacher_calls"] == 8


def test_retrain_schedule_moves_the_cutoff() -> None:
    from datetime import UTC, datetime

    from jobs.training import weekly_retrain_schedule

    when = datetime(2024, 12, 2, 3, 0, tzinfo=UTC)
    request = weekly_retrain_schedule(dg.build_schedule_context(scheduled_execution_time=when))
    ops = request.run_config["ops"]
    assert ops["sft_dataset"]["config"]["cutoff"] == when.isoformat()
    assert ops["finetuned_model"]["config"]["training_cutoff"] == when.isoformat()


def test_make_run_finetune_config_is_valid_for_the_retrain_job() -> None:
    from definitions import make_definitions
    from jobs.run_offline import QUICK_FINETUNE

    job = make_definitions().resolve_job_def("retrain")
    dg.validate_run_config(job, {"ops": {"finetuned_model": {"config": QUICK_FINETUNE}}})
    with pytest.raises(dg.DagsterInvalidConfigError, match="warmup"):
        dg.validate_run_config(job, {"ops": {"finetuned_model": {"config": {"warmup": 3}}}})

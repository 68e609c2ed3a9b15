"""The MLflow side of a fine-tune: one run per training with its parameters (never secrets), loss curve,
evaluation metrics under fixed names, predictions table, dataset (as `mlflow.data` input and card), prompt
version/hash, and the adapter + tokenizer as artifacts; then a new version of the registered model
`crypto-policy` with the alias `challenger` and the tags `training_cutoff` and `base_model` -- what
`crypto_pipeline.registry` resolves and loads (`make_provider("llm:challenger")`). The name and aliases
come from there. Aliases, not the deprecated stages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from crypto_pipeline.llm.prompts import PROMPT_VERSION, SYSTEM_PROMPT, prompt_hash
from crypto_pipeline.registry import CHALLENGER, MODEL_NAME, client
from crypto_pipeline.training.finetune import FinetuneResult

EXPERIMENT = f"{MODEL_NAME}-finetune"
ADAPTER_ARTIFACT = "adapter"
# The figures `crypto-pipeline models` shows side by side (the fine-tuned model's and its references').
KEY_METRICS: tuple[str, ...] = (
    "val_valid_json_rate",
    "val_balanced_accuracy",
    "val_macro_f1",
    "base_val_balanced_accuracy",
    "majority_val_balanced_accuracy",
    "rules_val_balanced_accuracy",
    "test_balanced_accuracy",
)


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    alias: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def _experiment_id(mlflow_client: Any, artifact_root: Path | None) -> str:
    found = mlflow_client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return found.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    return mlflow_client.create_experiment(EXPERIMENT, artifact_location=location)


def log_and_register(
    tracking_uri: str,
    result: FinetuneResult,
    *,
    dataset_frame: pl.DataFrame,
    dataset_card: dict[str, Any],
    metrics: dict[str, float] | None = None,
    predictions: dict[str, list[Any]] | None = None,
    confusion: dict[str, list[list[int]]] | None = None,
    loss_plot: Path | None = None,
    plots: list[Path] | None = None,
    artifact_root: Path | None = None,
    model_name: str = MODEL_NAME,
    alias: str = CHALLENGER,
) -> RegisteredVersion:
    """Log one fine-tune to MLflow and register its adapter as a new version of `model_name` with `alias`.

    `artifact_root` is where a NEW experiment keeps artifacts (default: beside the tracking database).
    Only the fine-tune config, dataset card figures and prompt identity are logged as parameters: there
    is no secret in them (the settings' API keys are never read here).
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mc = client(tracking_uri)
    experiment_id = _experiment_id(mc, artifact_root or default_artifact_root(tracking_uri))
    params = {
        **{f"ft_{k}": v for k, v in result.config.model_dump(mode="json").items()},
        "base_model": result.base_model,
        "device": result.device,
        "train_examples": result.train_examples,
        "training_cutoff": result.training_cutoff.isoformat(),
        "data_fingerprint": result.data_fingerprint,
        "prompt_version": PROMPT_VERSION,
        "system_prompt_hash": prompt_hash("", SYSTEM_PROMPT),
        "dataset_fingerprint": dataset_card.get("fingerprint"),
        "label_horizon_hours": dataset_card.get("horizon_hours"),
        "thresholds": json.dumps(dataset_card.get("thresholds")),
        "teacher": dataset_card.get("teacher") or "none",
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"finetune-{result.data_fingerprint}") as run:
        mlflow.log_params({k: _param(v) for k, v in params.items()})
        mlflow.set_tags(
            {
                "training_cutoff": result.training_cutoff.isoformat(),
                "prompt_version": PROMPT_VERSION,
                "base_model": result.base_model,
            }
        )
        for step, loss in result.losses:
            mlflow.log_metric("train_loss", loss, step=step)
        # The learning curve: MLflow's chart of this metric against its step is the curve itself.
        for seen, value in result.curve:
            mlflow.log_metric("curve_val_balanced_accuracy", value, step=seen)
        mlflow.log_metrics(
            {
                "train_seconds": result.train_seconds,
                "train_samples_per_second": result.samples_per_second,
                "train_tokens_per_second": result.tokens_per_second,
                "dataset_teacher_cost_usd": float(dataset_card.get("teacher_cost_usd") or 0.0),
                **(metrics or {}),
            }
        )
        source = mlflow.data.from_polars(
            dataset_frame.select("symbol", "at", "split", "action", "prompt_hash", "response").with_columns(
                pl.col("at").dt.to_string()
            ),
            name="sft_dataset",
            digest=dataset_card.get("fingerprint"),
        )
        mlflow.log_input(source, context="training")
        mlflow.log_dict(dataset_card, "dataset/card.json")
        if predictions:
            mlflow.log_table(predictions, "evaluation/predictions.json")
        if confusion:
            mlflow.log_dict(confusion, "evaluation/confusion.json")
        for plot in [loss_plot, *(plots or [])]:
            if plot is not None and Path(plot).is_file():
                mlflow.log_artifact(str(plot), "plots")
        mlflow.log_artifacts(str(result.adapter_dir), artifact_path=ADAPTER_ARTIFACT)
        artifact_uri = run.info.artifact_uri
        run_id = run.info.run_id
    try:
        mc.get_registered_model(model_name)
    except Exception:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST: first version
        mc.create_registered_model(model_name, description="LoRA adapters of the trading decision model")
    version = mc.create_model_version(
        model_name,
        source=f"{artifact_uri}/{ADAPTER_ARTIFACT}",
        run_id=run_id,
        tags={"training_cutoff": result.training_cutoff.isoformat(), "base_model": result.base_model},
    )
    mc.set_registered_model_alias(model_name, alias, version.version)
    return RegisteredVersion(model_name, str(version.version), run_id, alias)


def list_versions(tracking_uri: str, model_name: str = MODEL_NAME) -> pl.DataFrame:
    """One row per registered version: aliases, training cutoff, base model and the key metrics."""
    mc = client(tracking_uri)
    try:
        versions = mc.search_model_versions(f"name = '{model_name}'")
    except Exception:  # noqa: BLE001 - no registry yet
        versions = []
    rows = []
    for found in sorted(versions, key=lambda v: int(v.version)):
        # search results carry no aliases in MLflow 3; the single-version read does.
        v = mc.get_model_version(model_name, found.version)
        run = mc.get_run(v.run_id) if v.run_id else None
        metrics = run.data.metrics if run else {}
        rows.append(
            {
                "version": int(v.version),
                "aliases": ",".join(sorted(getattr(v, "aliases", []) or [])),
                "training_cutoff": (v.tags or {}).get("training_cutoff", ""),
                "base_model": Path((v.tags or {}).get("base_model", "")).name,
                **{m: metrics.get(m) for m in KEY_METRICS},
                "run_id": v.run_id,
            }
        )
    schema = {
        "version": pl.Int64,
        "aliases": pl.String,
        "training_cutoff": pl.String,
        "base_model": pl.String,
    }
    schema |= {m: pl.Float64 for m in KEY_METRICS} | {"run_id": pl.String}
    return pl.DataFrame(rows, schema=schema)


def _param(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text[:500]  # MLflow's parameter value limit is generous but not unbounded


def default_artifact_root(tracking_uri: str) -> Path | None:
    """`mlruns/artifacts` beside a sqlite tracking database (None for other stores)."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts"
    return None

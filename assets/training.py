"""Training assets: `sft_dataset` (market states -> labelled prompt/response examples) and
`finetuned_model` (QLoRA fine-tune -> evaluation -> MLflow `crypto-policy@challenger`). Thin wrappers over
`crypto_pipeline.training`; the checks gate what a later step may use."""

from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.checks import check_result
from assets.features import market_states
from assets.resources import WarehouseResource
from crypto_pipeline import registry
from crypto_pipeline.config import get_settings
from crypto_pipeline.plots import plot_class_balance, png_markdown
from crypto_pipeline.state import STATE_TIMEFRAMES
from crypto_pipeline.training.dataset import (
    HF_DATASET_DIR,
    DatasetConfig,
    build_sft_dataset,
    check_classes_per_split,
    check_prompts_point_in_time,
    check_responses_parse,
    load_inputs,
    read_sft_dataset,
    save_hf_dataset,
    write_sft_dataset,
)
from crypto_pipeline.training.finetune import FinetuneConfig
from crypto_pipeline.training.splits import check_no_split_leakage

DATASET_CHECKS = ("responses_parse", "no_split_leakage", "classes_in_every_split", "prompts_point_in_time")


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking + model registry (sqlite under mlruns/, artifacts beside it). A thin resource around
    `MlflowClient` rather than dagster-mlflow, which pins an older MLflow API (see STACK.md)."""

    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI (None: Settings.mlflow_tracking_uri, read at run time).",
    )

    @property
    def uri(self) -> str:
        return self.tracking_uri or get_settings().mlflow_tracking_uri

    def get_client(self):  # noqa: ANN201 - an MlflowClient (mlflow is imported lazily)
        return registry.client(self.uri)


class SftDatasetConfig(dg.Config):
    symbols: list[str] | None = Field(None, description="Symbols (None: all with market states).")
    labels: str = Field(
        "triple_barrier", description="'triple_barrier' (the response's own exits) or 'return_terciles'."
    )
    horizon_hours: int = Field(24, description="Forward-return horizon of the label.")
    embargo_hours: int = Field(24, description="Purge/embargo at each split boundary (>= horizon).")
    cutoff: str | None = Field(None, description="ISO time: no label ends after it (None: end of data).")
    val_days: float = 45.0
    test_days: float = 45.0
    lookahead_sample: int = Field(24, description="Prompts rebuilt from truncated data by the check.")
    # The optional teacher (off while teacher_url is None): an OpenAI-compatible server writes the
    # reasoning sentence of train examples it agrees with; the API key is read from the named env var.
    teacher_url: str | None = Field(None, description="/v1 base URL of the teacher (None: no teacher).")
    teacher_model: str = Field("", description="The teacher's model name on that server.")
    teacher_api_key_env: str = Field("OPENAI_API_KEY", description="Env var holding the teacher's key.")
    teacher_usd_per_1m_prompt_tokens: float = 0.0
    teacher_usd_per_1m_completion_tokens: float = 0.0
    teacher_max_examples: int | None = Field(200, description="Train examples sent to the teacher.")


def _teacher(config: SftDatasetConfig):  # noqa: ANN202 - OpenAICompatible or None
    if config.teacher_url is None:
        return None
    from crypto_pipeline.llm.openai_compat import OpenAICompatible

    return OpenAICompatible(
        config.teacher_url,
        config.teacher_model,
        api_key_env=config.teacher_api_key_env,
        usd_per_1m_prompt_tokens=config.teacher_usd_per_1m_prompt_tokens,
        usd_per_1m_completion_tokens=config.teacher_usd_per_1m_completion_tokens,
        name=f"teacher:{config.teacher_model}",
    )


@dg.asset(
    deps=[market_states],
    group_name="training",
    kinds={"polars", "parquet", "huggingface"},
    description="One prompt/response example per (symbol, decision time), labelled by the next 24 h.",
    check_specs=[dg.AssetCheckSpec(name, asset="sft_dataset", blocking=True) for name in DATASET_CHECKS],
)
def sft_dataset(
    context: dg.AssetExecutionContext, config: SftDatasetConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    wh = warehouse.get()
    ds_config = DatasetConfig(
        symbols=config.symbols,
        labels=config.labels,
        horizon_hours=config.horizon_hours,
        embargo_hours=config.embargo_hours,
        cutoff=datetime.fromisoformat(config.cutoff) if config.cutoff else None,
        val_days=config.val_days,
        test_days=config.test_days,
        teacher_max_examples=config.teacher_max_examples,
    )
    states, bars = load_inputs(wh, ds_config)
    dataset = build_sft_dataset(states, bars, ds_config, teacher=_teacher(config))
    frame = dataset.frame
    card = dataset.card()
    write_sft_dataset(wh, frame)
    folder = save_hf_dataset(frame, Path(wh.root) / HF_DATASET_DIR, card)
    features = wh.read(
        "features",
        symbols=sorted(frame["symbol"].unique().to_list()),
        timeframes=list(STATE_TIMEFRAMES),
        # the lookback the point-in-time check rebuilds states from (see check_prompts_point_in_time)
        start=frame["at"].min() - timedelta(days=10),
        end=frame["at"].max() + timedelta(hours=1),
    )
    checks = [
        check_responses_parse(frame),
        check_no_split_leakage(frame),
        check_classes_per_split(frame),
        check_prompts_point_in_time(frame, features, sample_size=config.lookahead_sample),
    ]
    context.log.info(dataset.card_markdown())
    return dg.MaterializeResult(
        metadata={
            "examples": frame.height,
            "card": dg.MetadataValue.md(dataset.card_markdown()),
            "hf_dataset": dg.MetadataValue.path(str(folder)),
            "fingerprint": card["fingerprint"],
            "teacher": card["teacher"] or "none",
            "teacher_cost_usd": float(card["teacher_cost_usd"]),
            "class_balance": dg.MetadataValue.md(
                png_markdown(plot_class_balance(card, folder / "class_balance.png"))
            ),
        },
        check_results=[check_result(c) for c in checks],
    )


class FinetunedModelConfig(dg.Config):
    base_model: str | None = Field(None, description="Folder or cached hub id (None: embedded SmolLM2).")
    load_in_4bit: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    lora_layers: int | None = Field(None, description="LoRA on the last N layers only (None: all).")
    learning_rate: float = 1e-3
    max_steps: int | None = 60
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 640
    seed: int = 0
    training_cutoff: str | None = Field(None, description="ISO time; train labels end by it.")
    max_train_examples: int | None = 240
    cache_lower_layers: bool = Field(
        False, description="Train the top lora_layers on the frozen layers' cached output (float, CPU)."
    )
    action_loss_weight: float = Field(1.0, description="Loss weight of the action's token.")
    curve_points: int = Field(5, description="Validation points of the learning curve.")
    eval_size: int | None = Field(
        300, description="Class-balanced validation and test samples scored by action (None: all)."
    )
    generate_size: int = Field(24, description="Validation examples the tuned model answers in full.")


@dg.asset(
    deps=[sft_dataset],
    group_name="training",
    kinds={"pytorch", "mlflow"},
    description="QLoRA adapter on sft_dataset, evaluated and registered as crypto-policy@challenger.",
    check_specs=[
        dg.AssetCheckSpec(
            "valid_json_rate", asset="finetuned_model", description="100% valid on validation."
        ),
        dg.AssetCheckSpec(
            "beats_base_model", asset="finetuned_model", description="Balanced accuracy > base."
        ),
    ],
)
def finetuned_model(
    context: dg.AssetExecutionContext,
    config: FinetunedModelConfig,
    warehouse: WarehouseResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    from crypto_pipeline.training.dataset import stored_card
    from crypto_pipeline.training.evaluate import model_checks
    from crypto_pipeline.training.pipeline import train_evaluate_register

    wh = warehouse.get()
    frame = read_sft_dataset(wh)
    ft = FinetuneConfig(
        **config.model_dump(exclude={"training_cutoff", "eval_size", "generate_size"}),
        training_cutoff=datetime.fromisoformat(config.training_cutoff) if config.training_cutoff else None,
    )
    states = wh.read("market_states", symbols=sorted(frame["symbol"].unique().to_list()))
    outcome = train_evaluate_register(
        frame,
        states,
        ft,
        output_dir=Path(wh.root) / "models" / "finetune",
        models_dir=Path(wh.root) / "models",
        tracking_uri=mlflow.uri,
        dataset_card=stored_card(frame, Path(wh.root) / HF_DATASET_DIR),
        eval_size=config.eval_size,
        generate_size=config.generate_size,
        log_line=context.log.info,
    )
    m = outcome.metrics
    reg = outcome.registered
    return dg.MaterializeResult(
        metadata={
            "registered": reg.uri if reg else "",
            "version": reg.version if reg else "",
            # open with `mlflow ui --backend-store-uri <tracking_uri>`; the run id finds it there
            "mlflow_run_id": reg.run_id if reg else "",
            "mlflow_tracking_uri": mlflow.uri,
            "steps": outcome.result.steps,
            "loss_curve": dg.MetadataValue.md(png_markdown(outcome.loss_plot)),
            "learning_curve": dg.MetadataValue.md(png_markdown(outcome.curve_plot)),
            "curve": ", ".join(f"{n}: {v:.3f}" for n, v in outcome.result.curve),
            **{k: float(v) for k, v in m.items()},
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=name,
                passed=passed,
                metadata=figures,
                # Beating the base is a warning: a short run may not move the action yet.
                severity=dg.AssetCheckSeverity.WARN
                if name == "beats_base_model"
                else dg.AssetCheckSeverity.ERROR,
            )
            for name, (passed, figures) in model_checks(m).items()
        ],
    )

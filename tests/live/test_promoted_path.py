"""The promoted model trades: `live_paper` with no run config trades crypto-policy@champion; without a
champion the rules trade and the newest challenger decides in shadow, said everywhere. The whole chain
once: a registered version, `champion` moved by the gate's own code, `champion_sensor`'s run request, and
that run placing orders at the local exchange with that version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from assets.resources import WarehouseResource
from assets.training import MlflowResource
from crypto_pipeline.backtest.gate import GateDecision, record_in_mlflow
from crypto_pipeline.config import Settings, get_settings
from crypto_pipeline.journal.summary import paper_record
from crypto_pipeline.registry import MODEL_NAME, client
from crypto_pipeline.warehouse import Warehouse
from definitions import make_definitions
from sensors.live import champion_sensor
from tests.test_registry import _register

BOUNDS = {
    "symbols": ["BTC/USDT"],
    "max_decisions": 1,
    "max_runtime_s": 90,
    "lookback_days": 3,
    "exchange_start": "2024-08-05T12:00:00",
}


@pytest.fixture(scope="module")
def buyer_version_source(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny always-BUY Llama and a LoRA adapter on it that changes nothing (B = 0): what a registered
    version is, a base folder and an adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from crypto_pipeline.config import get_settings
    from crypto_pipeline.llm.base_model import ensure_base_model
    from tests.tiny_llama import always_buy_llama

    tokenizer = AutoTokenizer.from_pretrained(ensure_base_model(get_settings().models_dir))
    base = tmp_path_factory.mktemp("buyer")
    always_buy_llama(tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    from transformers import AutoModelForCausalLM

    adapter = base.parent / "buyer-adapter"
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj"])
    ).save_pretrained(adapter)
    return base, adapter


@pytest.fixture
def settings(tmp_path: Path, monkeypatch, small_data: Path) -> Iterator[Settings]:
    """A registry, warehouse and market data of the test's own, read by the job through the environment
    (the embedded exchange replays `small_data`: two pairs, eleven days)."""
    monkeypatch.setenv("CRYPTO_PIPELINE_MARKET_DATA_DIR", str(small_data))
    monkeypatch.setenv("CRYPTO_PIPELINE_MLRUNS_DIR", str(tmp_path / "mlruns"))
    monkeypatch.setenv("CRYPTO_PIPELINE_WAREHOUSE_DIR", str(tmp_path / "wh"))
    (tmp_path / "mlruns").mkdir()
    get_settings.cache_clear()  # the job reads the settings of this test's environment
    yield Settings()
    get_settings.cache_clear()


def execute(settings: Settings, config: dict) -> dg.ExecuteInProcessResult:
    job = make_definitions().get_job_def("live_paper")
    return job.execute_in_process(
        run_config={"ops": {"live_paper_session": {"config": config}}},
        resources={"warehouse": WarehouseResource(root=str(settings.warehouse_dir))},
    )


def test_without_a_registry_the_rules_trade_and_the_run_says_why(settings: Settings) -> None:
    result = execute(settings, BOUNDS)
    assert result.success
    summary = result.output_for_node("live_paper_session")
    assert summary["provider"] == "rule-based" and summary["shadows"] == []
    assert f"no {MODEL_NAME}@champion" in summary["provider_note"]
    assert result.dagster_run.tags["crypto_pipeline/provider_note"] == summary["provider_note"][:200]
    sessions = Warehouse(settings.warehouse_dir).read("sessions")
    assert sessions["note"].to_list() == [summary["provider_note"]]


def test_a_challenger_without_a_champion_decides_in_shadow_beside_the_rules(
    settings: Settings, buyer_version_source
) -> None:
    base, adapter = buyer_version_source
    version = _register(settings, base_model=str(base), adapter=adapter, aliases=("challenger",))
    result = execute(settings, BOUNDS)
    assert result.success
    summary = result.output_for_node("live_paper_session")
    assert summary["provider"] == "rule-based"
    assert f"the newest challenger (version {version}) decides in shadow" in summary["provider_note"]
    shadow_run = f"{summary['session_id']}-shadow-v{version}"
    assert [s["run_id"] for s in summary["shadows"]] == [shadow_run]
    wh = Warehouse(settings.warehouse_dir)
    decisions = wh.read("decisions")
    theirs = decisions.filter(pl.col("run_id") == shadow_run)
    assert set(theirs["model_version"]) == {f"{MODEL_NAME}:{version}"} and theirs.height >= 1
    assert set(theirs["action"]) == {"BUY"}  # it would have bought...
    orders = wh.read("orders")
    assert orders.filter(pl.col("run_id") == shadow_run)["client_order_id"].str.starts_with(shadow_run).all()
    # ...and its figures are on its model version, for MLflow's comparison.
    tags = client(settings.mlflow_tracking_uri).get_model_version(MODEL_NAME, version).tags
    assert tags[f"paper.{summary['session_id']}.role"] == "shadow"
    assert int(tags[f"paper.{summary['session_id']}.decisions"]) == theirs.height
    # The gate's forward evidence for that version reads the same rows.
    record = paper_record(wh, version)
    assert record.runs == [shadow_run] and record.decisions == theirs.height


def test_the_gate_promotes_the_sensor_starts_live_paper_and_the_champion_places_orders(
    settings: Settings, buyer_version_source
) -> None:
    base, adapter = buyer_version_source
    version = _register(settings, base_model=str(base), adapter=adapter)
    mlflow_client = client(settings.mlflow_tracking_uri)
    # The gate's own code moves the alias on a passing verdict.
    verdict = GateDecision(True, f"llm:{version}", ["test: a passing verdict"])
    assert record_in_mlflow(mlflow_client, MODEL_NAME, version, verdict)["champion_after"] == version
    mlflow = MlflowResource(tracking_uri=settings.mlflow_tracking_uri)
    with dg.build_sensor_context(resources={"mlflow": mlflow}) as context:
        (request,) = champion_sensor(context).run_requests
    config = {**request.run_config["ops"]["live_paper_session"]["config"], **BOUNDS}
    result = execute(settings, config)
    assert result.success
    summary = result.output_for_node("live_paper_session")
    assert summary["orders_submitted"] >= 1
    wh = Warehouse(settings.warehouse_dir)
    decisions = wh.read("decisions").filter(pl.col("run_id") == summary["session_id"])
    assert set(decisions["model_version"]) == {f"{MODEL_NAME}:{version}"}
    verdicts = wh.read("risk_verdicts").filter(pl.col("verdict") == "approved")
    orders = wh.read("orders").filter(pl.col("status") == "submitted")
    assert set(orders["client_order_id"]) <= set(verdicts["client_order_id"]) and orders.height >= 1


def test_an_empty_run_config_trades_the_champion(settings: Settings, buyer_version_source) -> None:
    base, adapter = buyer_version_source
    version = _register(settings, base_model=str(base), adapter=adapter, aliases=("champion",))
    result = execute(settings, BOUNDS)
    summary = result.output_for_node("live_paper_session")
    assert summary["model_version"] == version and summary["orders_submitted"] >= 1
    assert summary["provider_note"].startswith(f"{MODEL_NAME}@champion")
    decisions = Warehouse(settings.warehouse_dir).read("decisions")
    assert set(decisions["model_version"]) == {f"{MODEL_NAME}:{version}"}

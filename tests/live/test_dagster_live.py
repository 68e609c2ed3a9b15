"""The Dagster layer of the live loop: `live_paper` runs a bounded session from run config, refuses real
money without the explicit setting, and `champion_sensor` starts it when the champion alias moves."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from assets.resources import WarehouseResource
from assets.training import MlflowResource
from definitions import make_definitions
from sensors.live import champion_sensor


def run_config(**config: object) -> dict:
    return {"ops": {"live_paper_session": {"config": config}}}


def test_live_paper_runs_a_bounded_session_and_journals_it(tmp_path: Path) -> None:
    job = make_definitions().get_job_def("live_paper")
    result = job.execute_in_process(
        run_config=run_config(
            symbols=["BTC/USDT", "ETH/USDT"],
            max_decisions=2,
            max_runtime_s=60,
            lookback_days=3,
            exchange_start="2024-08-05T12:00:00",
            order_book_in_prompt=True,
        ),
        resources={"warehouse": WarehouseResource(root=str(tmp_path / "wh"))},
    )
    assert result.success
    summary = result.output_for_node("live_paper_session")
    assert summary["decision_batches"] == 2 and summary["decisions"] == 4
    assert summary["stop_reason"] == "max decisions 2"
    from crypto_pipeline.warehouse import Warehouse

    decisions = Warehouse(tmp_path / "wh").read("decisions")
    assert decisions.height == 4
    # The run config's order_book_in_prompt reached the session: the live book is in every prompt.
    assert decisions["prompt"].str.contains(r"\nbook spread \d+\.\dbp imbalance").all()


def test_live_paper_refuses_real_money_without_the_explicit_setting(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CRYPTO_PIPELINE_LIVE_TRADING_ENABLED", raising=False)
    job = make_definitions().get_job_def("live_paper")
    result = job.execute_in_process(
        run_config=run_config(venue="alpaca_live"),
        resources={"warehouse": WarehouseResource(root=str(tmp_path / "wh"))},
        raise_on_error=False,
    )
    assert not result.success
    failure = result.failure_data_for_node("live_paper_session")
    assert "CRYPTO_PIPELINE_LIVE_TRADING_ENABLED" in failure.error.cause.message


@pytest.fixture
def registry(tmp_path: Path):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    client.create_registered_model("crypto-policy")
    for _ in range(2):
        client.create_model_version("crypto-policy", source=str(tmp_path))
    return uri, client


def test_champion_sensor_starts_live_paper_once_per_champion_move(registry) -> None:
    uri, client = registry
    mlflow = MlflowResource(tracking_uri=uri)
    with dg.build_sensor_context(resources={"mlflow": mlflow}) as context:
        assert champion_sensor(context).run_requests == []  # no champion yet
    client.set_registered_model_alias("crypto-policy", "champion", "1")
    with dg.build_sensor_context(resources={"mlflow": mlflow}) as context:
        result = champion_sensor(context)
    assert [r.run_key for r in result.run_requests] == ["champion-1"] and result.cursor == "1"
    config = result.run_requests[0].run_config["ops"]["live_paper_session"]["config"]
    assert config == {"provider": "local", "model_alias": "champion"}
    with dg.build_sensor_context(cursor="1", resources={"mlflow": mlflow}) as context:
        assert champion_sensor(context).run_requests == []  # unchanged: nothing new
    client.set_registered_model_alias("crypto-policy", "champion", "2")
    with dg.build_sensor_context(cursor="1", resources={"mlflow": mlflow}) as context:
        assert [r.run_key for r in champion_sensor(context).run_requests] == ["champion-2"]


def test_the_kill_command_sets_and_clears_the_flag_sessions_watch(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from crypto_pipeline.cli import app
    from crypto_pipeline.live.kill import kill_flag_path, kill_reason

    monkeypatch.setenv("CRYPTO_PIPELINE_WAREHOUSE_DIR", str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(app, ["kill", "--reason", "drill"]).exit_code == 0
    assert kill_reason(kill_flag_path(tmp_path)).endswith("drill")
    cleared = runner.invoke(app, ["kill", "--clear"])
    assert cleared.exit_code == 0 and "cleared" in cleared.output
    assert kill_reason(kill_flag_path(tmp_path)) is None


def test_the_kill_switch_sensor_runs_kill_switch_which_flattens_the_account(
    start_exchange, tmp_path: Path, monkeypatch
) -> None:
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide, TimeInForce
    from alpaca.trading.requests import MarketOrderRequest

    from crypto_pipeline.config import get_settings
    from crypto_pipeline.live.kill import kill_flag_path, request_kill
    from sensors.live import kill_switch_sensor

    from .conftest import KEY, SECRET

    server = start_exchange()
    client = TradingClient(KEY, SECRET, paper=True, raw_data=True, url_override=server.base_url)
    for symbol in ("BTC/USDT", "ETH/USDT"):
        client.submit_order(
            MarketOrderRequest(symbol=symbol, qty=0.1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC)
        )
    assert len(client.get_all_positions()) == 2
    warehouse = WarehouseResource(root=str(tmp_path / "wh"))
    with dg.build_sensor_context(resources={"warehouse": warehouse}) as context:
        assert kill_switch_sensor(context).run_requests == []  # switch off
    request_kill(kill_flag_path(tmp_path / "wh"), "drill")
    with dg.build_sensor_context(resources={"warehouse": warehouse}) as context:
        result = kill_switch_sensor(context)
    assert len(result.run_requests) == 1 and result.cursor.endswith("drill")
    with dg.build_sensor_context(cursor=result.cursor, resources={"warehouse": warehouse}) as context:
        assert kill_switch_sensor(context).run_requests == []  # acted on once

    monkeypatch.setenv("ALPACA_API_KEY", KEY)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    get_settings.cache_clear()
    try:
        run = (
            make_definitions()
            .get_job_def("kill_switch")
            .execute_in_process(
                run_config={"ops": {"flatten_account": {"config": {"exchange_url": server.base_url}}}},
                resources={"warehouse": warehouse},
            )
        )
    finally:
        get_settings.cache_clear()
    assert run.success and run.output_for_node("flatten_account") == 2
    assert client.get_all_positions() == []

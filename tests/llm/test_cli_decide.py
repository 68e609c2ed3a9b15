"""`crypto-pipeline decide` on the recorded market data (runs whenever ../shared/market-data exists)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crypto_pipeline.cli import app
from crypto_pipeline.llm.prompts import PROMPT_VERSION

runner = CliRunner()
needs_data = pytest.mark.requires_data("binance-spot-2024")


@needs_data
def test_decide_prints_state_prompt_and_decision() -> None:
    result = runner.invoke(
        app,
        ["decide", "--symbol", "BTC/USDT", "--at", "2024-06-01T12:00", "--provider", "rule"],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "state BTC/USDT @ 2024-06-01 12:00Z" in result.output
    assert "swing trader" in result.output and "tf rsi" in result.output  # system + user prompt
    assert "decision by rule-based" in result.output and "ema-rsi-v1" in result.output


@needs_data
def test_decide_with_a_local_model_prints_its_constrained_answer(tiny_folder: Path) -> None:
    """The default provider (a local transformers model), here the tiny Llama folder for speed."""
    result = runner.invoke(
        app,
        ["decide", "--symbol", "ETH/USDT", "--at", "2024-06-01T12:00", "--model", str(tiny_folder)],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "state ETH/USDT @ 2024-06-01 12:00Z" in result.output
    assert "swing trader" in result.output and "ETH/USDT" in result.output
    assert f"decision by local:{tiny_folder.name}" in result.output
    assert re.search(rf"prompt_version\W+{PROMPT_VERSION}", result.output)
    assert re.search(r'model text\W+\{"action": "(BUY|SELL|HOLD)"', result.output)  # the grammar's JSON


@needs_data
def test_decide_with_the_swarm_prints_every_members_vote(tiny_folder: Path) -> None:
    result = runner.invoke(
        app,
        ["decide", "--at", "2024-06-01T12:00", "--provider", "swarm", "--model", str(tiny_folder)],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "decision by swarm" in result.output
    assert f"vote local:{tiny_folder.name}" in result.output and "vote rule-based" in result.output


def test_bad_time_is_one_clear_error() -> None:
    result = runner.invoke(app, ["decide", "--at", "yesterday"])
    assert result.exit_code == 2
    assert "invalid --at 'yesterday'" in result.output


def test_unknown_provider_is_one_clear_error() -> None:
    result = runner.invoke(app, ["decide", "--at", "2024-06-01T12:00", "--provider", "gpt5"])
    assert result.exit_code == 2 and "unknown --provider 'gpt5'" in result.output


@needs_data
def test_unknown_symbol_is_one_clear_error() -> None:
    result = runner.invoke(
        app, ["decide", "--symbol", "NOPE/USDT", "--at", "2024-06-01T12:00", "--provider", "rule"]
    )
    assert result.exit_code == 1 and "no market state" in result.output


@needs_data
def test_a_registered_version_that_is_not_there_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """`--provider llm:REF` goes through the one provider factory: a missing version exits 2, and asking
    creates no registry."""
    monkeypatch.setenv("CRYPTO_PIPELINE_MLRUNS_DIR", str(tmp_path))
    result = runner.invoke(app, ["decide", "--at", "2024-06-01T12:00", "--provider", "llm:7"])
    assert result.exit_code == 2 and "no version '7' of crypto-policy" in result.output.replace("\n", " ")
    assert not (tmp_path / "mlflow.db").exists()

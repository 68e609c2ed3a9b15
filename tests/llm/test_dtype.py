"""`Settings.llm_dtype` reaches every path that builds a LocalLLM (the factory, the CLI's decide, backtest,
promote and replay-decisions, live sessions, the decision cache's key), and 'auto' is bfloat16 only where
the hardware computes it natively."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import crypto_pipeline.llm.local as local
from crypto_pipeline.backtest.cache import provider_identity
from crypto_pipeline.cli import app
from crypto_pipeline.config import Settings, get_settings, with_llm_dtype
from crypto_pipeline.live.config import LiveConfig
from crypto_pipeline.llm.local import LocalLLM, resolve_dtype
from crypto_pipeline.llm.swarm import Swarm
from crypto_pipeline.registry import make_provider

runner = CliRunner()


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> Any:
    """`native(True|False)`: pretend the CPU does or does not compute bfloat16 natively."""

    def set_native(value: bool) -> None:
        where = "a test CPU" + ("" if value else " without AVX512-BF16 or AMX")
        monkeypatch.setattr(local, "bf16_native", lambda cuda=False: (value, where))

    return set_native


def test_auto_is_bfloat16_only_where_native_and_says_which(native: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="crypto_pipeline.llm.local")
    native(False)
    assert resolve_dtype("auto") == "float32"
    assert "dtype auto: float32 on a test CPU without AVX512-BF16 or AMX" in caplog.text
    assert resolve_dtype("bfloat16") == "bfloat16"  # asked for by name: kept, with a warning
    assert "emulated" in caplog.text
    native(True)
    assert resolve_dtype("auto") == "bfloat16"
    assert resolve_dtype("float32") == "float32"
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float16")


def test_the_setting_is_the_default_and_an_explicit_dtype_wins(
    monkeypatch: pytest.MonkeyPatch, native: Any
) -> None:
    native(False)
    monkeypatch.setenv("CRYPTO_PIPELINE_LLM_DTYPE", "bfloat16")
    get_settings.cache_clear()
    try:
        assert get_settings().llm_dtype == "bfloat16"
        assert LocalLLM().dtype_choice == "bfloat16" and LocalLLM().dtype == "bfloat16"
        assert LocalLLM(dtype="float32").dtype == "float32"
        assert LocalLLM(quantize="int8").dtype == "float32"  # int8 keeps float32 activations
    finally:
        monkeypatch.delenv("CRYPTO_PIPELINE_LLM_DTYPE")
        get_settings.cache_clear()
    assert Settings().llm_dtype == "auto" and LocalLLM(settings=Settings()).dtype == "float32"
    with pytest.raises(ValueError, match="int8"):
        LocalLLM(quantize="int8", dtype="bfloat16")
    with pytest.raises(ValueError, match="unknown dtype 'half'"):
        with_llm_dtype(Settings(), "half")


def test_the_factory_builds_every_local_model_in_the_settings_dtype() -> None:
    settings = Settings(llm_dtype="bfloat16")
    assert make_provider("llm", settings).provider.dtype_choice == "bfloat16"
    swarm = make_provider("swarm", settings).provider
    assert isinstance(swarm, Swarm)
    assert [m.dtype_choice for m in swarm.members if isinstance(m, LocalLLM)] == ["bfloat16"]
    assert make_provider("llm", Settings(llm_dtype="float32")).provider.dtype_choice == "float32"


def test_a_model_loads_and_decides_in_bfloat16(tiny_folder: Path) -> None:
    llm = LocalLLM(tiny_folder, dtype="bfloat16", batch_size=2).load()
    assert llm.dtype == "bfloat16"
    assert {p.dtype for p in llm.model.parameters()} == {torch.bfloat16}
    from crypto_pipeline.state import MarketState

    [decision] = llm.decide([MarketState.example()])
    assert decision.valid, decision.error


def test_a_wrapped_model_reports_the_dtype_it_is_in(tiny_model: Any, smollm2_tokenizer: Any) -> None:
    llm = LocalLLM.from_objects(tiny_model, smollm2_tokenizer, model_id="tiny", dtype="bfloat16")
    assert llm.dtype == "float32"  # what the weights are, not what was asked


def test_the_decision_cache_keeps_bfloat16_answers_apart(native: Any) -> None:
    native(True)
    f32 = LocalLLM(dtype="float32", model_version="crypto-policy:3")
    bf16 = LocalLLM(dtype="auto", model_version="crypto-policy:3")
    assert provider_identity(f32)[1] == "crypto-policy:3"  # float32 keys are what they were
    assert provider_identity(bf16)[1] == "crypto-policy:3@bfloat16"
    from crypto_pipeline.llm.rule_based import RuleBased

    assert provider_identity(Swarm([bf16, RuleBased()]))[1].endswith("@bfloat16")
    assert "@" not in provider_identity(Swarm([f32, RuleBased()]))[1]


def test_live_sessions_build_their_models_in_the_configured_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    import crypto_pipeline.live.run as live_run

    seen: list[str] = []
    monkeypatch.setattr(
        live_run, "make_provider", lambda spec, settings, **_: seen.append(settings.llm_dtype) or "chosen"
    )
    settings = Settings(llm_dtype="float32")
    live_run.session_provider(LiveConfig(provider="local", dtype="bfloat16"), settings, load=False)
    live_run.session_provider(LiveConfig(provider="local"), settings, load=False)
    assert seen == ["bfloat16", "float32"]  # None: the settings' own
    with pytest.raises(ValueError, match="dtype"):
        LiveConfig(dtype="float16")


def test_the_deciding_commands_take_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    import crypto_pipeline.backtest.gate as gate
    import crypto_pipeline.backtest.inputs as inputs
    import crypto_pipeline.backtest.run as run

    seen: dict[str, str] = {}

    def capture(name: str, result: Any) -> Any:
        def fake(*_: Any, settings: Any, **__: Any) -> Any:
            seen[name] = settings.llm_dtype
            return result

        return fake

    monkeypatch.setattr(inputs, "check_inputs", lambda **_: None)
    monkeypatch.setattr(run, "backtest", capture("backtest", ({"ok": True}, None)))
    monkeypatch.setattr(gate, "promote", capture("promote", {"ok": True}))
    args = ["--start", "2024-06-01", "--end", "2024-06-02", "--dtype", "bfloat16"]
    for command in (["backtest", "--policy", "llm:base"], ["promote"]):
        result = runner.invoke(app, [*command, *args])
        assert result.exit_code == 0, result.output
    assert seen == {"backtest": "bfloat16", "promote": "bfloat16"}
    for command in (["decide", "--at", "2024-06-01T12:00"], ["backtest"], ["promote"], ["replay-decisions"]):
        extra = ["--run", "x"] if command == ["replay-decisions"] else []
        result = runner.invoke(app, [*command, *extra, "--dtype", "float16"])
        assert result.exit_code == 2 and "unknown dtype 'float16'" in result.output, (command, result.output)

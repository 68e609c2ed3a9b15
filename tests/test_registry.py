"""`crypto_pipeline.registry`: the one provider factory on every spec, registered versions resolved on a
temporary MLflow registry, backtest and live loading the same version on the same base, and the
registered name written in one library module only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from crypto_pipeline.config import Settings
from crypto_pipeline.errors import UserInputError
from crypto_pipeline.live.config import LiveConfig
from crypto_pipeline.live.run import session_provider
from crypto_pipeline.llm.llama_cpp import LlamaCpp
from crypto_pipeline.llm.local import LocalLLM
from crypto_pipeline.llm.openai_compat import OpenAICompatible
from crypto_pipeline.llm.rule_based import RuleBased
from crypto_pipeline.llm.swarm import Swarm
from crypto_pipeline.registry import (
    MODEL_NAME,
    ProviderOptions,
    alias_version,
    make_provider,
    ref_of_uri,
    resolve,
    version_of,
)
from crypto_pipeline.state import MarketState
from tests.training.conftest import tiny_llama_dir  # noqa: F401 - the fixture, reused

LIBRARY = Path(__file__).resolve().parents[1] / "crypto_pipeline"


def _register(settings: Settings, *, base_model: str, adapter: Path | None = None, aliases=()) -> str:  # noqa: ANN001
    """One new version of crypto-policy in `settings`' registry, as training registers it (tags included)."""
    import mlflow

    from crypto_pipeline.registry import client

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    source = str(settings.mlruns_dir)
    run_id = None
    if adapter is not None:
        experiment = mlflow.get_experiment_by_name("adapters")
        experiment_id = (
            experiment.experiment_id
            if experiment
            else mlflow.create_experiment("adapters", (settings.mlruns_dir / "artifacts").as_uri())
        )
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_artifacts(str(adapter), artifact_path="adapter")
        source, run_id = f"{run.info.artifact_uri}/adapter", run.info.run_id
    mc = client(settings.mlflow_tracking_uri)
    try:
        mc.get_registered_model(MODEL_NAME)
    except Exception:  # noqa: BLE001 - the first version
        mc.create_registered_model(MODEL_NAME)
    tags = {"training_cutoff": "2024-05-01T00:00:00+00:00", "base_model": base_model}
    version = str(mc.create_model_version(MODEL_NAME, source=source, run_id=run_id, tags=tags).version)
    for alias in aliases:
        mc.set_registered_model_alias(MODEL_NAME, alias, version)
    return version


def test_each_spec_makes_its_provider_and_old_spellings_still_work(tmp_path: Path) -> None:
    settings = Settings(mlruns_dir=tmp_path)
    for spec in ("rules", "rule"):
        choice = make_provider(spec, settings)
        assert isinstance(choice.provider, RuleBased) and choice.version is None
    for spec in ("llm", "local"):
        base = make_provider(spec, settings).provider
        # The embedded base, keyed "base" in the decision cache; nothing loads until the first decision.
        assert isinstance(base, LocalLLM) and base.model_ref is None and base.model_version == "base"
        assert base.adapter is None and base.model is None
    openai = make_provider(
        "openai", settings, options=ProviderOptions(openai_base_url="http://127.0.0.1:9/v1", openai_model="m")
    )
    assert isinstance(openai.provider, OpenAICompatible) and "m at http://127.0.0.1:9/v1" in openai.note
    llama = make_provider("llama-cpp", settings, options=ProviderOptions(model="x.gguf")).provider
    assert isinstance(llama, LlamaCpp) and llama.model_path == Path("x.gguf")
    swarm = make_provider("swarm", settings).provider
    assert isinstance(swarm, Swarm)
    assert [type(m) for m in swarm.members] == [LocalLLM, RuleBased]
    folder = make_provider("local", settings, options=ProviderOptions(model=str(tmp_path), batch_size=1))
    assert folder.provider.model_ref == str(tmp_path) and folder.provider.batch_size == 1
    assert not (tmp_path / "mlflow.db").exists()  # none of them asked the registry


@pytest.mark.parametrize("spec", ["gpt", "rules:3", "llm:", "openai:champion", "llama-cpp:1", ""])
def test_an_unknown_spec_is_one_clear_error(spec: str, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="unknown provider .*expected one of rules \\| llm"):
        make_provider(spec, Settings(mlruns_dir=tmp_path))


def test_provider_settings_that_cannot_work_fail_before_anything_loads(tmp_path: Path) -> None:
    settings = Settings(mlruns_dir=tmp_path)
    with pytest.raises(UserInputError, match="openai_base_url"):
        make_provider("openai", settings)
    with pytest.raises(UserInputError, match=f"no version '7' of {MODEL_NAME}: no MLflow registry"):
        make_provider("llm:7", settings)
    assert not (tmp_path / "mlflow.db").exists()  # asking created no empty registry
    assert alias_version(settings.mlflow_tracking_uri, "champion") is None
    assert not (tmp_path / "mlflow.db").exists()


def test_llm_ref_resolves_a_version_or_alias_on_the_base_it_was_trained_on(tmp_path: Path) -> None:
    settings = Settings(mlruns_dir=tmp_path / "mlruns")
    settings.mlruns_dir.mkdir()
    base = tmp_path / "my-base"
    base.mkdir()
    local = _register(settings, base_model=str(base), aliases=("champion",))
    elsewhere = _register(settings, base_model="/not/on/this/machine/SmolLM2", aliases=("challenger",))
    assert (local, elsewhere) == ("1", "2")
    found = resolve("champion", settings)
    assert found.version == "1" and found.training_cutoff.isoformat() == "2024-05-01T00:00:00+00:00"
    assert found.base_folder() == base and found.model_version == f"{MODEL_NAME}:1"
    for spec in ("llm:champion", "llm:1", "local:1"):
        choice = make_provider(spec, settings)
        llm = choice.provider
        assert choice.version == "1" and llm.model_ref == base and llm.name == "local:my-base"
        assert llm.adapter == f"models:/{MODEL_NAME}/1" and llm.model_version == f"{MODEL_NAME}:1"
        assert llm.model is None  # not loaded
    on_embedded = make_provider("llm:challenger", settings)
    assert on_embedded.provider.model_ref is None and on_embedded.version == "2"
    assert "embedded base" in on_embedded.note and "not a folder here" in on_embedded.note
    swarm = make_provider("swarm:2", settings)
    assert isinstance(swarm.provider, Swarm) and swarm.version == "2"
    # An MLflow URI of the registered model given as an adapter is the same registered version.
    via_uri = make_provider(
        "llm", settings, options=ProviderOptions(adapter=f"models:/{MODEL_NAME}@champion")
    )
    assert via_uri.version == "1" and via_uri.provider.model_ref == base
    with pytest.raises(UserInputError, match=f"no version '9' of {MODEL_NAME}"):
        make_provider("llm:9", settings)
    with pytest.raises(UserInputError, match=f"no version 'nope' of {MODEL_NAME}"):
        make_provider("llm:nope", settings)


def test_without_a_champion_live_falls_back_to_the_challenger_and_says_so(tmp_path: Path) -> None:
    settings = Settings(mlruns_dir=tmp_path)
    config = LiveConfig(provider="local", model_alias="champion")
    with pytest.raises(UserInputError, match="fine-tune first"):
        session_provider(config, settings, load=False)
    _register(settings, base_model="", aliases=("challenger",))
    choice = session_provider(config, settings, load=False)
    assert choice.version == "1" and "falling back to the newest challenger (version 1)" in choice.note
    swarm = session_provider(config.model_copy(update={"provider": "swarm"}), settings, load=False)
    assert swarm.version == "1" and "swarm of no crypto-policy@champion yet" in swarm.note
    # A backtest names its version: no silent stand-in there.
    with pytest.raises(UserInputError, match="no version 'champion'"):
        make_provider("llm:champion", settings)


def test_backtest_and_live_load_the_same_version_on_the_same_base_and_decide_alike(
    tmp_path: Path,
    tiny_llama_dir: Path,  # noqa: F811 - the fixture imported above
) -> None:
    """The parity gap this module closes: live used to put every adapter on the embedded SmolLM2, the
    backtest on the base named in the version's `base_model` tag. A tiny Llama's adapter (its shapes fit
    only its own base) now loads on that base in both, and both decide exactly as the adapter folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    settings = Settings(mlruns_dir=tmp_path / "mlruns")
    settings.mlruns_dir.mkdir()
    version = _register(settings, base_model=str(tiny_llama_dir), adapter=adapter, aliases=("champion",))

    backtest = make_provider("llm:champion", settings).provider  # what `backtest --policy llm:champion` runs
    live = session_provider(LiveConfig(provider="local", model_alias="champion"), settings).provider
    assert live.model is not None  # live loads before the session starts
    for llm in (backtest, live):
        assert (llm.model_ref, llm.adapter) == (Path(tiny_llama_dir), f"models:/{MODEL_NAME}/{version}")
        assert llm.model_version == f"{MODEL_NAME}:{version}" and llm.name == f"local:{tiny_llama_dir.name}"
    states = [MarketState.example(), MarketState.example().model_copy(update={"change_1h": -3.0})]
    reference = LocalLLM(tiny_llama_dir, adapter=adapter).decide(states)
    decided = {name: llm.decide(states) for name, llm in (("backtest", backtest), ("live", live))}
    assert all(d.valid for d in reference), [d.error for d in reference]
    for name, decisions in decided.items():
        assert [d.raw_text for d in decisions] == [d.raw_text for d in reference], name
        assert {d.model_version for d in decisions} == {f"{MODEL_NAME}:{version}"}


def test_uri_and_journal_keys_map_back_to_versions() -> None:
    assert ref_of_uri(f"models:/{MODEL_NAME}/12") == "12"
    assert ref_of_uri(f"models:/{MODEL_NAME}@champion") == "champion"
    assert ref_of_uri("models:/other/1") is None and ref_of_uri("/some/adapter") is None
    assert ref_of_uri(None) is None
    assert version_of(f"{MODEL_NAME}:3") == "3"
    assert version_of("base") is None and version_of(None) is None


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def test_the_registered_name_is_written_in_one_library_module() -> None:
    """Outside docstrings, "crypto-policy" appears in `registry.py` only: every other module takes the
    name (and the journal key and URIs built from it) from there."""
    writers = set()
    for path in sorted(LIBRARY.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in skip
                and "crypto-policy" in node.value
            ):
                writers.add(path.relative_to(LIBRARY.parent).as_posix())
    assert writers == {"crypto_pipeline/registry.py"}


def test_the_registry_imports_nothing_that_reads_it() -> None:
    """Arrows point one way: backtests, live sessions and training import the registry, never the reverse."""
    tree = ast.parse((LIBRARY / "registry.py").read_text())
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("crypto_pipeline")
    }
    readers = (
        "crypto_pipeline.backtest",
        "crypto_pipeline.live",
        "crypto_pipeline.training",
        "crypto_pipeline.mcp",
    )
    assert not {m for m in imported if m.startswith(readers)}, imported

"""LocalLLM on a tiny Llama (fast) and once on the real SmolLM2-135M folder."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from crypto_pipeline.llm.decision import Action
from crypto_pipeline.llm.local import LocalLLM, resolve_adapter
from crypto_pipeline.llm.prompts import PROMPT_VERSION, build_user_prompt, prompt_hash
from crypto_pipeline.llm.provider import DecisionProvider
from crypto_pipeline.state import MarketState

TOKENS = 24


def _llm(model: Any, tokenizer: Any, **kwargs: Any) -> LocalLLM:
    return LocalLLM.from_objects(model, tokenizer, model_id="tiny-llama", **kwargs)


def test_batched_prefix_cached_generation_equals_the_naive_loop(
    states: Callable[[int], list[MarketState]], tiny_model: Any, smollm2_tokenizer: Any
) -> None:
    prompts = [build_user_prompt(s) for s in states(5)]
    llm = _llm(tiny_model, smollm2_tokenizer, constrained=False, batch_size=5, max_new_tokens=TOKENS)
    naive = [llm.naive_complete(p, max_new_tokens=TOKENS).text for p in prompts]
    batched = [c.text for c in llm.complete(prompts)]
    uncached = [
        c.text
        for c in _llm(
            tiny_model, smollm2_tokenizer, constrained=False, reuse_prefix_cache=False, max_new_tokens=TOKENS
        ).complete(prompts)
    ]
    assert len(set(naive)) > 1, "the tiny model must answer differently to different prompts"
    assert batched == naive
    assert uncached == naive


def test_prefix_cache_is_computed_once_and_not_mutated(
    states: Callable[[int], list[MarketState]], tiny_model: Any, smollm2_tokenizer: Any
) -> None:
    llm = _llm(tiny_model, smollm2_tokenizer, constrained=False, max_new_tokens=4)
    prompts = [build_user_prompt(s) for s in states(3)]
    llm.complete(prompts)
    cache, prefix = llm._prefix_cache, llm._prefix_ids
    assert cache.get_seq_length() == len(prefix) > 50  # the system prompt, shared by every state
    llm.complete(prompts[:2])
    assert llm._prefix_cache is cache and cache.get_seq_length() == len(prefix)
    assert llm.chat_token_ids(prompts[0])[: len(prefix)] == prefix


def test_constrained_decoding_makes_even_a_random_model_parse(
    states: Callable[[int], list[MarketState]], tiny_model: Any, smollm2_tokenizer: Any
) -> None:
    states = states(6)
    free = _llm(tiny_model, smollm2_tokenizer, constrained=False, batch_size=6).decide(states)
    forced = _llm(tiny_model, smollm2_tokenizer, constrained=True, batch_size=4).decide(states)
    assert not any(d.valid for d in free)  # random weights write no JSON...
    assert all(d.valid for d in forced), [d.error for d in forced]  # ...unless the grammar forces it
    assert {d.action for d in forced} <= set(Action)
    assert all(d.raw_text.startswith('{"action": "') for d in forced)


def test_decisions_carry_provenance(
    states: Callable[[int], list[MarketState]], tiny_model: Any, smollm2_tokenizer: Any
) -> None:
    llm = _llm(tiny_model, smollm2_tokenizer, seed=7)
    assert isinstance(llm, DecisionProvider)
    states = states(2)
    decisions = llm.decide(states)
    for state, d in zip(states, decisions, strict=True):
        prompt = build_user_prompt(state)
        assert (d.symbol, d.at) == (state.symbol, state.at)
        assert d.model_id == "tiny-llama" and d.prompt_version == PROMPT_VERSION
        assert d.prompt_hash == prompt_hash(prompt)
        assert d.prompt_tokens == len(llm.chat_token_ids(prompt))
        assert 0 < d.completion_tokens <= llm.max_new_tokens
        assert d.latency_ms > 0 and d.cost_usd == 0.0


def test_greedy_generation_is_reproducible(
    states: Callable[[int], list[MarketState]], tiny_model: Any, smollm2_tokenizer: Any
) -> None:
    states = states(3)
    a = _llm(tiny_model, smollm2_tokenizer).decide(states)
    b = _llm(tiny_model, smollm2_tokenizer, batch_size=1).decide(states)
    assert [d.raw_text for d in a] == [d.raw_text for d in b]


def test_generation_failure_is_an_invalid_hold(
    states: Callable[[int], list[MarketState]],
    tiny_model: Any,
    smollm2_tokenizer: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The transformers generate path (jump_forward=False) and the jump-forward loop, which calls forward.
    llm = _llm(tiny_model, smollm2_tokenizer, jump_forward=False)
    jump = _llm(tiny_model, smollm2_tokenizer, jump_forward=True, reuse_prefix_cache=False)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(tiny_model, "generate", boom)
    monkeypatch.setattr(tiny_model, "forward", boom)
    assert all(not d.valid and "generation failed" in d.error for d in jump.decide(states(2)))
    decisions = llm.decide(states(3))
    assert all(d.action is Action.HOLD and not d.valid and "generation failed" in d.error for d in decisions)
    assert [d.symbol for d in decisions] == [s.symbol for s in states(3)]


def test_out_of_memory_splits_the_batch_before_giving_up(
    states: Callable[[int], list[MarketState]],
    tiny_model: Any,
    smollm2_tokenizer: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    llm = _llm(tiny_model, smollm2_tokenizer, batch_size=4, jump_forward=False)
    real_generate = tiny_model.generate
    batch_sizes: list[int] = []

    def small_batches_only(*args: Any, **kwargs: Any) -> Any:
        batch_sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("CPU out of memory")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(tiny_model, "generate", small_batches_only)
    decisions = llm.decide(states(4))
    assert all(d.valid for d in decisions)
    assert batch_sizes == [4, 2, 1, 1, 2, 1, 1]


def test_a_model_that_cannot_load_yields_invalid_holds(tmp_path: Path) -> None:
    decisions = LocalLLM(tmp_path / "no-such-model").decide([MarketState.example()])
    assert decisions[0].action is Action.HOLD and not decisions[0].valid
    assert decisions[0].error.startswith("model failed to load")


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_folder: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_folder)
    # init_lora_weights=False: random A and B, so the adapter really changes the outputs.
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return out


def test_loads_a_folder_and_applies_a_lora_adapter(
    states: Callable[[int], list[MarketState]], tiny_folder: Path, tiny_adapter: Path
) -> None:
    states = states(3)
    plain = LocalLLM(tiny_folder, constrained=False, max_new_tokens=TOKENS).decide(states)
    adapted_llm = LocalLLM(tiny_folder, adapter=tiny_adapter, constrained=False, max_new_tokens=TOKENS)
    adapted = adapted_llm.decide(states)
    assert [d.raw_text for d in plain] != [d.raw_text for d in adapted]
    assert adapted[0].model_version == str(tiny_adapter)


def _fake_hub_cache(root: Path, repo_id: str, folder: Path) -> None:
    """The layout huggingface_hub leaves after a download: a snapshot per commit and refs/main."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_loads_a_hub_id_from_the_local_cache_without_touching_the_network(
    states: Callable[[int], list[MarketState]],
    tiny_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Even when transformers was imported before the offline switch was set (the usual case in a
    process that trained or evaluated first), a hub id resolves from the cache and never calls the hub."""
    import huggingface_hub.constants
    import huggingface_hub.file_download

    _fake_hub_cache(tmp_path, "test-org/tiny-llama", tiny_folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read at import: too late
    hub_calls: list[str] = []

    def no_network(url: str, *args: Any, **kwargs: Any) -> Any:
        hub_calls.append(url)
        raise ConnectionError("no network in this test")

    monkeypatch.setattr(huggingface_hub.file_download, "get_hf_file_metadata", no_network)
    state = states(1)
    from_hub = LocalLLM("test-org/tiny-llama", constrained=False, max_new_tokens=TOKENS).decide(state)
    from_folder = LocalLLM(tiny_folder, constrained=False, max_new_tokens=TOKENS).decide(state)
    assert hub_calls == []
    assert from_hub[0].model_id == "test-org/tiny-llama" and from_hub[0].raw_text  # loaded, generated
    assert from_hub[0].raw_text == from_folder[0].raw_text  # the same weights


def test_a_gguf_file_is_loaded_from_its_folder_with_gguf_file(
    tiny_model: Any, smollm2_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route to transformers' GGUF loader (the real file takes ~17 s to load: see base_model)."""
    import transformers

    calls: list[tuple[str, str, dict[str, Any]]] = []

    def spy(kind: str, loaded: Any) -> Any:
        def from_pretrained(path: str, **kwargs: Any) -> Any:
            calls.append((kind, str(path), kwargs))
            return loaded

        return from_pretrained

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy("tokenizer", smollm2_tokenizer))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy("model", tiny_model))
    llm = LocalLLM(tmp_path / "weights" / "model.Q4_1.gguf", constrained=False).load()
    assert llm.model is tiny_model
    assert [(kind, path, kw["gguf_file"]) for kind, path, kw in calls] == [
        ("tokenizer", str(tmp_path / "weights"), "model.Q4_1.gguf"),
        ("model", str(tmp_path / "weights"), "model.Q4_1.gguf"),
    ]


def test_resolves_an_adapter_logged_and_registered_in_mlflow(
    states: Callable[[int], list[MarketState]], tmp_path: Path, tiny_folder: Path, tiny_adapter: Path
) -> None:
    """`runs:/`, `models:/name/N` and `models:/name@champion` all lead to the logged adapter's files,
    and LocalLLM given the registry URI decides exactly as with the adapter folder."""
    import mlflow
    from mlflow import MlflowClient

    from crypto_pipeline.config import Settings

    settings = Settings(mlruns_dir=tmp_path)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    experiment = mlflow.create_experiment("adapters", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifacts(str(tiny_adapter), artifact_path="adapter")
    client = MlflowClient(settings.mlflow_tracking_uri)
    client.create_registered_model("tiny-policy")
    version = client.create_model_version(
        "tiny-policy", source=f"{run.info.artifact_uri}/adapter", run_id=run.info.run_id
    )
    client.set_registered_model_alias("tiny-policy", "champion", version.version)

    weights = (tiny_adapter / "adapter_model.safetensors").read_bytes()
    for uri in (
        f"runs:/{run.info.run_id}/adapter",
        f"models:/tiny-policy/{version.version}",
        "models:/tiny-policy@champion",
    ):
        folder = resolve_adapter(uri, settings)
        assert (folder / "adapter_config.json").is_file(), uri
        assert (folder / "adapter_model.safetensors").read_bytes() == weights, uri
    with pytest.raises(Exception, match="nope"):
        resolve_adapter("models:/nope@champion", settings)

    two = states(2)
    kwargs: dict[str, Any] = {"constrained": False, "max_new_tokens": TOKENS}
    champion = LocalLLM(tiny_folder, adapter="models:/tiny-policy@champion", settings=settings, **kwargs)
    from_registry = champion.decide(two)
    from_folder = LocalLLM(tiny_folder, adapter=tiny_adapter, **kwargs).decide(two)
    assert [d.raw_text for d in from_registry] == [d.raw_text for d in from_folder]
    assert from_registry[0].model_version == "models:/tiny-policy@champion"


def test_resolve_adapter_refuses_a_folder_without_an_adapter(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        resolve_adapter(tmp_path)


def test_loads_in_4bit_and_still_parses(
    states: Callable[[int], list[MarketState]], tiny_folder: Path
) -> None:
    llm = LocalLLM(tiny_folder, load_in_4bit=True, constrained=True).load()
    assert any(type(m).__name__ == "Linear4bit" for m in llm.model.modules())
    decisions = llm.decide(states(2))
    assert all(d.valid for d in decisions), [d.error for d in decisions]


@pytest.mark.slow
def test_real_smollm2_constrained_decisions_all_parse(
    states: Callable[[int], list[MarketState]], smollm2_dir: Path
) -> None:
    """The embedded base model end to end: batched, prefix-cached, constrained, on the default path
    (no model named: the converted folder cached under warehouse/models)."""
    llm = LocalLLM(constrained=True, batch_size=3)
    decisions = llm.decide(states(3))
    assert all(d.valid for d in decisions), [d.error for d in decisions]
    assert all(d.model_id == "SmolLM2-135M-Instruct" for d in decisions)
    assert llm.model.name_or_path == str(smollm2_dir)
    assert all(d.raw_text.startswith('{"action": "') and d.raw_text.endswith('"}') for d in decisions)
    assert all(d.completion_tokens <= llm.max_new_tokens for d in decisions)
    assert llm.model.config.num_hidden_layers == 30  # the real 135M model, not the tiny one


def test_a_malformed_state_is_an_invalid_hold_not_an_exception(tiny_folder: Path) -> None:
    class Broken:
        symbol, at, portfolio = "BTC/USDT", MarketState.example().at, None

        @property
        def price(self) -> float:  # read first when the prompt is rendered
            raise RuntimeError("state cannot be encoded")

    [decision] = LocalLLM(tiny_folder, constrained=False, max_new_tokens=TOKENS).decide([Broken()])  # type: ignore[list-item]
    assert not decision.valid and decision.action == Action.HOLD
    assert "state cannot be encoded" in (decision.error or "")

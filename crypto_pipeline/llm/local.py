"""LocalLLM: decisions from a transformers causal LM on this machine.

Loads a Hugging Face folder, a hub id (offline cache only) or a GGUF file; optionally 4-bit
(bitsandbytes NF4) and a LoRA adapter from a path or an MLflow model version. Generation is batched
with left padding, greedy and seeded; the system prompt is the same for every state, so its KV cache is
computed once and shared by every batch (layout per row: [system prefix][padding][user prompt]; the
attention mask hides the padding and position ids are derived from the mask, so the result is what
each row would give alone). Under the grammar, decoding jumps over its fixed text by default
(`decoding.py`): the model's own greedy tokens, verified, with one forward pass per free choice. The KV
cache is preallocated (`kv_cache.py`), so no step copies it.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crypto_pipeline.config import LLM_DTYPES, get_settings
from crypto_pipeline.llm.action_slot import ACTIONS, action_prefix_ids, action_token_ids
from crypto_pipeline.llm.base_model import BASE_MODEL_NAME, ensure_base_model, offline_hub
from crypto_pipeline.llm.decision import TradeDecision, parse_decision
from crypto_pipeline.llm.prompts import (
    PROMPT_VERSION,
    SYSTEM_PROMPT,
    build_messages,
    build_user_prompt,
    prompt_hash,
)
from crypto_pipeline.llm.provider import describe_error, failed_decisions, state_meta

if TYPE_CHECKING:
    import torch

    from crypto_pipeline.config import Settings
    from crypto_pipeline.state import MarketState

log = logging.getLogger(__name__)
UNCONSTRAINED_MAX_NEW_TOKENS = 160


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


class LocalLLM:
    """A `DecisionProvider` over a local transformers model. Loads lazily, on the first `decide`."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        gguf_file: str | None = None,
        adapter: str | Path | None = None,
        load_in_4bit: bool = False,
        constrained: bool = True,
        batch_size: int = 8,
        max_new_tokens: int | None = None,
        reuse_prefix_cache: bool = True,
        jump_forward: bool = True,
        quantize: str | None = None,
        dtype: str | None = None,
        seed: int = 0,
        system_prompt: str = SYSTEM_PROMPT,
        model_version: str | None = None,
        settings: Settings | None = None,
        name: str | None = None,
    ) -> None:
        self.model_ref = model
        self.gguf_file = gguf_file
        self.adapter = adapter
        self.load_in_4bit = load_in_4bit
        self.constrained = constrained
        self.batch_size = max(1, batch_size)
        self.reuse_prefix_cache = reuse_prefix_cache
        self.jump_forward = jump_forward
        if quantize not in (None, "int8"):
            raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
        self.quantize = quantize
        # None: the setting (`Settings.llm_dtype`, env CRYPTO_PIPELINE_LLM_DTYPE), so that every path that
        # builds a LocalLLM (CLI, backtests, evaluation, live) decides in the same format. bfloat16 halves
        # the bytes per weight and uses AVX512-BF16/AMX where the CPU has them (2x float32's matmul rate
        # there; without them it is emulated and far slower); it rounds, so a few decisions can differ:
        # bench/bench_dtype.py measures the action agreement, docs/llm.md records it.
        choice = dtype if dtype is not None else (settings or get_settings()).llm_dtype
        if choice not in LLM_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(LLM_DTYPES)}, got {choice!r}")
        if quantize == "int8" and dtype == "bfloat16":  # the setting's bfloat16 gives way to int8
            raise ValueError("quantize='int8' keeps float32 activations: use it with dtype float32 or auto")
        self.dtype_choice = "float32" if quantize == "int8" else choice
        self._dtype: str | None = None  # resolved on first use (`dtype`): the check needs torch
        self.seed = seed
        self.system_prompt = system_prompt
        self.settings = settings
        self.model_id = str(model) if model is not None else BASE_MODEL_NAME
        self.model_version = model_version or (str(adapter) if adapter is not None else None)
        self.name = name or f"local:{Path(self.model_id).name}"
        self._max_new_tokens = max_new_tokens
        self.model: Any = None
        self.tokenizer: Any = None
        self._grammar: Any = None
        self._prefix_ids: list[int] | None = None
        self._prefix_cache: Any = None
        self._lock = threading.Lock()  # one generate at a time: torch already uses every core

    @property
    def dtype(self) -> str:
        """The number format the weights are in: 'float32' or 'bfloat16' (`dtype_choice` resolved; 'auto'
        is bfloat16 only where the hardware computes it natively)."""
        if self._dtype is None:
            self._dtype = resolve_dtype(self.dtype_choice, cuda=self._on_cuda())
        return self._dtype

    def _on_cuda(self) -> bool:
        if not self.load_in_4bit:  # float weights load on the CPU
            return False
        import torch

        return torch.cuda.is_available()

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def from_objects(cls, model: Any, tokenizer: Any, *, model_id: str, **kwargs: Any) -> LocalLLM:
        """Wrap an already loaded model and tokenizer (tests, notebooks, a model fresh from training)."""
        llm = cls(model_id, **kwargs)
        llm._install(model, tokenizer)
        return llm

    def load(self) -> LocalLLM:
        if self.model is not None:
            return self
        offline = offline_hub()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        path, gguf = self._resolve_model_path()
        hub_kwargs: dict[str, Any] = {"local_files_only": True} if offline else {}
        load_kwargs: dict[str, Any] = {"dtype": getattr(torch, self.dtype), **hub_kwargs}
        if offline:  # the Auto class does not pass local_files_only on to its adapter lookup
            load_kwargs["adapter_kwargs"] = {"local_files_only": True}
        if gguf:
            load_kwargs["gguf_file"] = gguf
        if self.load_in_4bit:
            load_kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=getattr(torch, self.dtype),
            )
            load_kwargs["device_map"] = "cuda" if torch.cuda.is_available() else "cpu"
        tokenizer = AutoTokenizer.from_pretrained(path, **hub_kwargs, **({"gguf_file": gguf} if gguf else {}))
        model = AutoModelForCausalLM.from_pretrained(path, **load_kwargs)
        if self.adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(resolve_adapter(self.adapter, self.settings)))
            if not self.load_in_4bit:
                model = model.merge_and_unload()  # plain weights decode faster than base + LoRA
        self._install(model, tokenizer)
        return self

    def _resolve_model_path(self) -> tuple[str, str | None]:
        if self.model_ref is None:
            settings = self.settings or get_settings()
            return str(ensure_base_model(settings.models_dir)), None
        ref = Path(self.model_ref)
        if ref.suffix == ".gguf":
            return str(ref.parent), ref.name
        return str(self.model_ref), self.gguf_file

    def _install(self, model: Any, tokenizer: Any) -> None:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        float_params = [p.dtype for p in model.parameters() if p.dtype.is_floating_point]
        if float_params:  # what the weights are really in (a model wrapped by `from_objects` included)
            self._dtype = str(float_params[0]).removeprefix("torch.")
        if self.quantize == "int8" and not self.load_in_4bit:
            model = quantize_int8(model)
        self.model, self.tokenizer = model, tokenizer
        self._prefix_ids = self._prefix_cache = None
        if self.constrained:
            from crypto_pipeline.llm.constrained import DecisionGrammar

            self._grammar = DecisionGrammar.for_tokenizer(tokenizer, model.config.vocab_size)

    @property
    def max_new_tokens(self) -> int:
        if self._max_new_tokens is not None:
            return self._max_new_tokens
        if self.constrained:
            from crypto_pipeline.llm.constrained import max_completion_chars

            return max_completion_chars() + 1  # every token is >= 1 char, +1 for the end token
        return UNCONSTRAINED_MAX_NEW_TOKENS

    # --- the provider interface -----------------------------------------------------------------

    def decide(self, states: list[MarketState]) -> list[TradeDecision]:
        if not states:
            return []
        try:
            self.load()
        except Exception as exc:  # noqa: BLE001 - a model that cannot load yields HOLDs, not a crash
            return failed_decisions(states, f"model failed to load: {describe_error(exc)}", **self._meta())
        try:
            prompts = [build_user_prompt(s) for s in states]
        except Exception as exc:  # noqa: BLE001 - a malformed state is a HOLD for the batch, never a crash
            return failed_decisions(states, f"prompt failed: {describe_error(exc)}", **self._meta())
        decisions: list[TradeDecision] = []
        for start in range(0, len(states), self.batch_size):
            batch_states = states[start : start + self.batch_size]
            batch_prompts = prompts[start : start + self.batch_size]
            decisions.extend(self._decide_batch(batch_states, batch_prompts))
        return decisions

    def _decide_batch(self, states: Sequence[MarketState], prompts: Sequence[str]) -> list[TradeDecision]:
        import torch

        started = time.perf_counter()
        try:
            completions = self.complete(prompts)
        except (torch.OutOfMemoryError, MemoryError) as exc:
            if len(states) > 1:  # a smaller batch may fit: split and retry
                half = len(states) // 2
                return self._decide_batch(states[:half], prompts[:half]) + self._decide_batch(
                    states[half:], prompts[half:]
                )
            return failed_decisions(states, f"out of memory: {describe_error(exc)}", **self._meta())
        except Exception as exc:  # noqa: BLE001 - generation failures become HOLDs with the reason
            return failed_decisions(states, f"generation failed: {describe_error(exc)}", **self._meta())
        latency_ms = (time.perf_counter() - started) * 1e3 / len(states)  # amortized over the batch
        return [
            parse_decision(c.text).with_meta(
                **state_meta(state),
                **self._meta(),
                prompt_hash=prompt_hash(prompt, self.system_prompt),
                latency_ms=latency_ms,
                prompt_tokens=c.prompt_tokens,
                completion_tokens=c.completion_tokens,
                cost_usd=0.0,
                raw_text=c.text,
                output_mode="grammar" if self._grammar is not None else "text",
            )
            for state, prompt, c in zip(states, prompts, completions, strict=True)
        ]

    def _meta(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "prompt_version": PROMPT_VERSION,
        }

    def action_probabilities(self, states: Sequence[MarketState]) -> list[dict[str, float]]:
        """P(BUY), P(SELL), P(HOLD) at each state's action slot (`action_slot.py`): one forward pass over
        the prompt and the response's fixed opening, batched, no generation. Raises if the model fails
        (a score is a measurement, not a trading decision: there is no HOLD to fall back on)."""
        import torch

        from crypto_pipeline.llm.decoding import left_padded

        self.load()
        opening, ids = action_prefix_ids(self.tokenizer), action_token_ids(self.tokenizer)
        out: list[dict[str, float]] = []
        for start in range(0, len(states), self.batch_size):
            rows = [
                self.chat_token_ids(build_user_prompt(s)) + opening
                for s in states[start : start + self.batch_size]
            ]
            with self._lock, torch.inference_mode():
                prefix_len, cache = self._shared_prefix(rows)
                device = self.model.device
                padded, mask = left_padded(
                    [r[prefix_len:] for r in rows], self.tokenizer.pad_token_id, device
                )
                if prefix_len:
                    mask = torch.cat(
                        [torch.ones(len(rows), prefix_len, dtype=mask.dtype, device=device), mask], 1
                    )
                positions = (mask.cumsum(1) - 1).clamp(min=0)[:, prefix_len:]
                kwargs: dict[str, Any] = {"past_key_values": cache} if cache is not None else {}
                logits = self.model(
                    input_ids=padded, attention_mask=mask, position_ids=positions, logits_to_keep=1, **kwargs
                ).logits[:, -1, ids]
            probs = torch.softmax(logits.float(), dim=-1).cpu().tolist()
            out += [dict(zip(ACTIONS, p, strict=True)) for p in probs]
        return out

    # --- generation -----------------------------------------------------------------------------

    def chat_token_ids(self, user_prompt: str) -> list[int]:
        """The full prompt (system + user + assistant header) as the model sees it."""
        text = self.tokenizer.apply_chat_template(
            build_messages(user_prompt, self.system_prompt), tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def complete(self, user_prompts: Sequence[str]) -> list[Completion]:
        """Greedy completions of one batch of user prompts (the system prompt is prepended)."""
        import torch

        from crypto_pipeline.llm.decoding import left_padded  # torch-heavy: imported on first use
        from crypto_pipeline.llm.kv_cache import preallocate

        self.load()
        rows = [self.chat_token_ids(p) for p in user_prompts]
        with self._lock, torch.inference_mode():
            torch.manual_seed(self.seed)
            prefix_len, cache = self._shared_prefix(rows)
            suffixes = [r[prefix_len:] for r in rows]
            pad = self.tokenizer.pad_token_id
            device = self.model.device  # the GPU's when loaded there (4-bit on CUDA)
            padded, mask = left_padded(suffixes, pad, device)
            width = padded.shape[1]
            if cache is not None:  # room for the prompts and the answers: no copy of the cache per step
                preallocate(cache, width + 2 * self.max_new_tokens)
            if prefix_len:
                prefix = torch.tensor([rows[0][:prefix_len]] * len(rows), dtype=torch.long, device=device)
                padded = torch.cat([prefix, padded], dim=1)
                mask = torch.cat([torch.ones_like(prefix), mask], dim=1)
            if self._grammar is not None and self.jump_forward:
                return self._complete_jump_forward(rows, padded, mask, prefix_len, cache)
            kwargs: dict[str, Any] = {}
            if cache is not None:
                kwargs["past_key_values"] = cache
            if self._grammar is not None:
                kwargs["logits_processor"] = [self._grammar.logits_processor()]
            output = self.model.generate(
                input_ids=padded,
                attention_mask=mask,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                **kwargs,
            )
        new_tokens = output[:, padded.shape[1] :]
        return [
            Completion(
                text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                prompt_tokens=len(row),
                completion_tokens=_count_generated(tokens, pad, self._eos_ids()),
            )
            for row, tokens in zip(rows, new_tokens, strict=True)
        ]

    def _complete_jump_forward(
        self, rows: list[list[int]], padded: Any, mask: Any, prefix_len: int, cache: Any
    ) -> list[Completion]:
        """Constrained greedy decoding with the grammar's fixed text jumped over (see decoding.py)."""
        from crypto_pipeline.llm.decoding import decode_jump_forward

        eos = self.tokenizer.eos_token_id
        decoded = decode_jump_forward(
            self.model,
            self.tokenizer,
            self._grammar.compiled,
            padded[:, prefix_len:],
            mask,
            cache,
            max_new_tokens=self.max_new_tokens,
            eos_id=eos if eos is not None else min(self._eos_ids()),
            pad_id=self.tokenizer.pad_token_id,
        )
        return [
            Completion(
                text=self.tokenizer.decode(d.tokens, skip_special_tokens=True),
                prompt_tokens=len(row),
                completion_tokens=len(d.tokens),
            )
            for row, d in zip(rows, decoded, strict=True)
        ]

    def _shared_prefix(self, rows: list[list[int]]) -> tuple[int, Any]:
        """(length, a per-batch copy of the KV cache) of the system prompt, or (0, None) without reuse."""
        if not self.reuse_prefix_cache:
            return 0, None
        import torch

        if self._prefix_ids is None:
            self._prefix_ids = self.system_prefix_ids()
            out = self.model(torch.tensor([self._prefix_ids], device=self.model.device), use_cache=True)
            self._prefix_cache = out.past_key_values
        n = len(self._prefix_ids)
        # Every row must start with the exact prefix and have at least one token after it.
        if n == 0 or any(r[:n] != self._prefix_ids or len(r) <= n for r in rows):
            return 0, None
        cache = copy.deepcopy(self._prefix_cache)
        if len(rows) > 1:
            cache.batch_repeat_interleave(len(rows))
        return n, cache

    def system_prefix_ids(self) -> list[int]:
        """Tokens of the system turn: the longest prefix shared by two chats that differ only in the user turn."""
        a = self.chat_token_ids("a")
        b = self.chat_token_ids("b")
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return a[:n]

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos) if isinstance(eos, list) else {eos} if eos is not None else set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def naive_complete(self, user_prompt: str, max_new_tokens: int | None = None) -> Completion:
        """The usual agent loop, as a baseline: one unconstrained `generate` on the full prompt."""
        import torch

        self.load()
        row = self.chat_token_ids(user_prompt)
        with self._lock, torch.inference_mode():
            torch.manual_seed(self.seed)
            ids = torch.tensor([row], device=self.model.device)
            output = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens or UNCONSTRAINED_MAX_NEW_TOKENS,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        tokens = output[0, ids.shape[1] :]
        return Completion(
            text=self.tokenizer.decode(tokens, skip_special_tokens=True),
            prompt_tokens=len(row),
            completion_tokens=_count_generated(tokens, self.tokenizer.pad_token_id, self._eos_ids()),
        )


def bf16_native(*, cuda: bool = False) -> tuple[bool, str]:
    """(whether the device computes bfloat16 natively, the device in words). On CPU that takes AVX512-BF16
    or AMX through oneDNN: elsewhere torch emulates bfloat16 matmuls, measured 40x slower than float32 on an
    AVX2-only EPYC (docs/llm.md)."""
    import torch

    if cuda:
        return bool(torch.cuda.is_bf16_supported()), f"GPU {torch.cuda.get_device_name()}"
    checks = [
        getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    native = torch.backends.mkldnn.is_available() and any(check() for check in checks if check is not None)
    capability = torch.backends.cpu.get_cpu_capability()
    return native, f"this CPU ({capability}{', AVX512-BF16/AMX' if native else ', no AVX512-BF16 or AMX'})"


def resolve_dtype(choice: str, *, cuda: bool = False) -> str:
    """'float32' or 'bfloat16' for a `dtype` choice: 'auto' is bfloat16 where the device computes it
    natively, else float32 (one log line says which and why); 'bfloat16' is kept even where it is emulated
    (a warning says it will be slow)."""
    if choice == "float32":
        return "float32"
    native, where = bf16_native(cuda=cuda)
    if choice == "bfloat16":
        if not native:
            log.warning("LocalLLM dtype bfloat16 on %s: emulated, several times slower than float32", where)
        return "bfloat16"
    if choice != "auto":
        raise ValueError(f"dtype must be one of {', '.join(LLM_DTYPES)}, got {choice!r}")
    chosen = "bfloat16" if native else "float32"
    log.info("LocalLLM dtype auto: %s on %s", chosen, where)
    return chosen


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantization of the decoder's linear layers (weights int8, activations quantized per
    batch; VNNI kernels on x86). The output head stays float32: its logits pick every token."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    quantize_dynamic(body, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return model


def _count_generated(tokens: torch.Tensor, pad_id: int, eos_ids: set[int]) -> int:
    """Tokens the model produced, up to and including its end token (padding after it is not counted)."""
    count = 0
    for token in tokens.tolist():
        count += 1
        if token in eos_ids:
            break
    else:
        # No end token: trailing pads (if pad differs from eos) are not the model's.
        while count and tokens[count - 1].item() == pad_id and pad_id not in eos_ids:
            count -= 1
    return count


def resolve_adapter(adapter: str | Path, settings: Settings | None = None) -> Path:
    """A LoRA adapter folder from a path, or from an MLflow model URI (`models:/name/3`, `models:/name@champion`)."""
    text = str(adapter)
    if not text.startswith(("models:/", "runs:/")):
        path = Path(adapter)
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"no LoRA adapter (adapter_config.json) in {path}")
        return path
    import mlflow

    settings = settings or get_settings()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text))
    found = sorted(local.rglob("adapter_config.json"))
    if not found:
        raise FileNotFoundError(f"MLflow model {text} holds no LoRA adapter (adapter_config.json)")
    return found[0].parent

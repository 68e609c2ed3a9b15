"""LlamaCpp: decisions from a GGUF model run in-process by llama.cpp (the optional extra
`crypto-pipeline[llama]`, llama-cpp-python), decoded under the GBNF form of the decision grammar.

One more choice for people without torch. States are decided one at a time: llama-cpp-python keeps the
last prompt's KV cache and reuses the longest common token prefix, so the system prompt is computed
once. Greedy (temperature 0) and seeded, like `LocalLLM`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crypto_pipeline.llm.base_model import embedded_gguf_path
from crypto_pipeline.llm.decision import TradeDecision, parse_decision
from crypto_pipeline.llm.prompts import (
    PROMPT_VERSION,
    SYSTEM_PROMPT,
    build_messages,
    build_user_prompt,
    prompt_hash,
)
from crypto_pipeline.llm.provider import describe_error, failed_decisions, state_meta
from crypto_pipeline.llm.schema import decision_grammar, max_completion_chars

if TYPE_CHECKING:
    from crypto_pipeline.state import MarketState

EXTRA_HINT = "pip install 'crypto-pipeline[llama]' (llama-cpp-python, builds llama.cpp with cmake)"


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ImportError(f"the llama-cpp provider needs llama-cpp-python: {EXTRA_HINT}") from exc
    return llama_cpp


class LlamaCpp:
    """A `DecisionProvider` over a GGUF file (default: the embedded SmolLM2-135M Q4_1). Loads lazily."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        constrained: bool = True,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        seed: int = 0,
        system_prompt: str = SYSTEM_PROMPT,
        model_version: str | None = None,
        name: str | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else None
        self.constrained = constrained
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.seed = seed
        self.system_prompt = system_prompt
        self.model_version = model_version
        self.name = name or "llama-cpp"
        self.llm: Any = None
        self._grammar: Any = None
        self._lock = threading.Lock()  # one llama context: one completion at a time

    @property
    def model_id(self) -> str:
        return self.model_path.name if self.model_path is not None else "embedded GGUF"

    def load(self) -> LlamaCpp:
        if self.llm is not None:
            return self
        llama_cpp = import_llama_cpp()
        if self.model_path is None:
            self.model_path = embedded_gguf_path()
        self.llm = llama_cpp.Llama(
            model_path=str(self.model_path),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            seed=self.seed,
            verbose=False,
        )
        if self.constrained:
            self._grammar = llama_cpp.LlamaGrammar.from_string(decision_grammar("gbnf"), verbose=False)
        return self

    def decide(self, states: list[MarketState]) -> list[TradeDecision]:
        if not states:
            return []
        try:
            self.load()
        except Exception as exc:  # noqa: BLE001 - a model that cannot load yields HOLDs, not a crash
            return failed_decisions(states, f"model failed to load: {describe_error(exc)}", **self._meta())
        return [self._decide_one(state) for state in states]

    def _decide_one(self, state: MarketState) -> TradeDecision:
        started = time.perf_counter()
        try:
            user = build_user_prompt(state)
            with self._lock:
                body = self.llm.create_chat_completion(
                    messages=build_messages(user, self.system_prompt),
                    temperature=0.0,
                    max_tokens=max_completion_chars() + 1 if self.constrained else 256,
                    grammar=self._grammar,
                    seed=self.seed,
                )
            text = body["choices"][0]["message"]["content"] or ""
            usage = body.get("usage") or {}
        except Exception as exc:  # noqa: BLE001 - generation failures become HOLDs with the reason
            return TradeDecision.invalid(
                f"generation failed: {describe_error(exc)}", **state_meta(state), **self._meta()
            )
        return parse_decision(text).with_meta(
            **state_meta(state),
            **self._meta(),
            prompt_hash=prompt_hash(user, self.system_prompt),
            latency_ms=(time.perf_counter() - started) * 1e3,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            cost_usd=0.0,
            raw_text=text,
            output_mode="gbnf" if self._grammar is not None else "text",
        )

    def _meta(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "prompt_version": PROMPT_VERSION,
        }

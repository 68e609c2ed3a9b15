"""Any `/v1/chat/completions` endpoint (vLLM, Ollama, llama.cpp server, DeepSeek, Grok, OpenAI) as a
decision provider, over httpx: timeouts, retries with exponential backoff, structured outputs where the
server offers them, and tokens and cost counted per decision. The API key comes from the environment only.

Structured outputs: the decision's JSON schema (`schema.decision_json_schema`, from the same bounds as the
parser and the local grammar) goes as `response_format: json_schema` (OpenAI, vLLM, llama.cpp's C++
`llama-server`), as `response_format: json_object` with the schema beside it (llama-cpp-python's
`llama_cpp.server`, which knows no json_schema type), or as Ollama's `format`; `gbnf` sends the decision
grammar itself as llama.cpp's `grammar` field. A server that refuses a form is asked again one step down,
json_schema -> json_object -> text, and remembered; each decision records the mode in `output_mode`.
`json` (JSON mode without the schema) is there to measure what the schema adds."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

import httpx
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from crypto_pipeline.llm.decision import TradeDecision, parse_decision
from crypto_pipeline.llm.prompts import PROMPT_VERSION, build_messages, build_user_prompt, prompt_hash
from crypto_pipeline.llm.provider import describe_error, state_meta
from crypto_pipeline.llm.schema import SCHEMA_NAME, decision_grammar, decision_json_schema

if TYPE_CHECKING:
    from crypto_pipeline.state import MarketState

_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
SchemaMode = Literal["auto", "json_schema", "ollama", "gbnf", "json_object", "json", "text"]
SCHEMA_MODES: tuple[str, ...] = ("auto", "json_schema", "ollama", "gbnf", "json_object", "json", "text")
# Where a server refuses a mode, the next one tried (text always works: the parser finds the JSON).
_FALLBACK = {
    "json_schema": "json_object",
    "ollama": "json_object",
    "gbnf": "json_object",
    "json_object": "text",
    "json": "text",
}
# Words of a refusal of the output format (vLLM, llama.cpp, Ollama, OpenAI and proxies phrase it so).
_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "format", "schema", "json", "grammar")
# Words of a 5xx that is really a refusal of `response_format` (see `_refuses_format`).
_REJECTION_WORDS = ("should be", "must be", "not supported", "unsupported", "validation error")


class _RetryableStatus(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, _RetryableStatus | httpx.TimeoutException | httpx.TransportError)


class OpenAICompatible:
    """Decisions from a chat-completions server. States are sent concurrently, one request each."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 30.0,
        max_attempts: int = 3,
        backoff_s: float = 0.5,
        schema_mode: SchemaMode = "auto",
        strict_schema: bool = True,
        temperature: float = 0.0,
        max_tokens: int = 256,
        seed: int | None = 0,
        usd_per_1m_prompt_tokens: float = 0.0,
        usd_per_1m_completion_tokens: float = 0.0,
        concurrency: int = 4,
        extra_body: Mapping[str, Any] | None = None,
        name: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[: -len("/v1")]
        self.model = model
        self.name = name or f"openai:{model}"
        self.timeout_s = timeout_s
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        if schema_mode not in SCHEMA_MODES:
            raise ValueError(f"schema_mode must be one of {', '.join(SCHEMA_MODES)}, got {schema_mode!r}")
        # auto starts from the strongest form every OpenAI-compatible server may know.
        self.output_mode: str = "json_schema" if schema_mode == "auto" else schema_mode
        self.strict_schema = strict_schema
        self._mode_lock = threading.Lock()
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self.usd_per_1m_prompt_tokens = usd_per_1m_prompt_tokens
        self.usd_per_1m_completion_tokens = usd_per_1m_completion_tokens
        self.concurrency = max(1, concurrency)
        # Server-specific sampling fields, e.g. llama.cpp's `repeat_penalty` (its server defaults to 1.1
        # where the in-process path uses 1.0); sent as given, so only to servers that accept them.
        self.extra_body = dict(extra_body or {})
        # The key is read once from the environment and lives only in the client's headers.
        api_key = os.environ.get(api_key_env) if api_key_env else None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout_s), transport=transport
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAICompatible:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def decide(self, states: list[MarketState]) -> list[TradeDecision]:
        if not states:
            return []
        if len(states) == 1:
            return [self._decide_guarded(states[0])]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(states))) as pool:
            return list(pool.map(self._decide_guarded, states))

    def _decide_guarded(self, state: MarketState) -> TradeDecision:
        try:
            return self._decide_one(state)
        except Exception as exc:  # noqa: BLE001 - e.g. a malformed state: a HOLD, never an exception
            return TradeDecision.invalid(
                f"decision failed: {describe_error(exc)}", provider=self.name, model_id=self.model
            )

    def _decide_one(self, state: MarketState) -> TradeDecision:
        started = time.perf_counter()
        user = build_user_prompt(state)
        meta: dict[str, Any] = {
            **state_meta(state),
            "provider": self.name,
            "model_id": self.model,
            "prompt_version": PROMPT_VERSION,
            "prompt_hash": prompt_hash(user),
        }
        try:
            body, mode = self._complete(build_messages(user))
            text = body["choices"][0]["message"]["content"] or ""
            usage = body.get("usage") or {}
        except RetryError as exc:
            last = exc.last_attempt.exception()
            reason = f"{describe_error(last) if last else 'failed'} after {self.max_attempts} attempts"
            return TradeDecision.invalid(f"endpoint unavailable: {reason}", latency_ms=_ms(started), **meta)
        except Exception as exc:  # noqa: BLE001 - bad responses become an invalid HOLD, never an exception
            return TradeDecision.invalid(
                f"endpoint error: {describe_error(exc)}", latency_ms=_ms(started), **meta
            )
        prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
        completion_tokens = _int_or_none(usage.get("completion_tokens"))
        return parse_decision(text).with_meta(
            **meta,
            model_version=body.get("model"),
            latency_ms=_ms(started),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=self._cost(prompt_tokens, completion_tokens),
            raw_text=text,
            output_mode=mode,
        )

    def _payload(self, messages: list[dict[str, str]], mode: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            payload["seed"] = self.seed
        payload.update(self.extra_body)
        if mode == "json_schema":
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": SCHEMA_NAME,
                    "schema": decision_json_schema(),
                    "strict": self.strict_schema,
                },
            }
        elif mode == "ollama":
            payload["format"] = decision_json_schema()
        elif mode == "gbnf":
            # llama.cpp's servers (C++ and Python) take a GBNF grammar; others ignore an unknown field,
            # so this mode is chosen, never reached by `auto`.
            payload["grammar"] = decision_grammar("gbnf")
        elif mode == "json_object":
            # llama-cpp-python's server knows no json_schema type but reads a schema beside json_object.
            payload["response_format"] = {"type": "json_object", "schema": decision_json_schema()}
        elif mode == "json":
            payload["response_format"] = {"type": "json_object"}
        return payload

    def _complete(self, messages: list[dict[str, str]]) -> tuple[dict[str, Any], str]:
        """The server's response body and the output mode it answered under."""
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential(multiplier=self.backoff_s, max=30),
            retry=retry_if_exception(_is_retryable),
        )
        for attempt in retrying:
            with attempt:
                mode = self.output_mode
                response = self._client.post("/v1/chat/completions", json=self._payload(messages, mode))
                while mode in _FALLBACK and _refuses_format(response, mode):
                    # The server does not know this mode: step down, remember, and ask again.
                    mode = self._step_down(mode)
                    response = self._client.post("/v1/chat/completions", json=self._payload(messages, mode))
                if response.status_code in _RETRYABLE_STATUS:
                    raise _RetryableStatus(response.status_code)
                response.raise_for_status()
                return response.json(), mode
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        if prompt_tokens is None and completion_tokens is None:
            return None
        return (
            (prompt_tokens or 0) * self.usd_per_1m_prompt_tokens
            + (completion_tokens or 0) * self.usd_per_1m_completion_tokens
        ) / 1e6

    def _step_down(self, refused: str) -> str:
        """The mode after `refused`; the provider keeps the lowest one any concurrent request reached."""
        nxt = _FALLBACK[refused]
        with self._mode_lock:
            if _STRENGTH.index(nxt) > _STRENGTH.index(self.output_mode):
                self.output_mode = nxt
        return nxt


# Modes from the most to the least constrained: concurrent step-downs keep the lowest one reached.
_STRENGTH = ("json_schema", "ollama", "gbnf", "json_object", "json", "text")


def _refuses_format(response: httpx.Response, mode: str) -> bool:
    """Whether the server refused the output format `mode` rather than failed: step down, don't retry.

    A client error (4xx) that names the format: the request was fine but for that field. A 500 only when
    its body says the `response_format` field itself is invalid: llama-cpp-python's `llama_cpp.server`
    (0.3.x) wraps FastAPI's request validation error, a 422 elsewhere, into a 500 ("Input should be
    'text' or 'json_object'", ggml-org/llama.cpp#23463), and older C++ `llama-server` builds answered
    500 "response_format type must be one of ..." (#9522). Both are deterministic: retrying cannot help.
    Any other 5xx (a crash, an overloaded server) says nothing of the format and stays retryable.
    """
    text = response.text.lower()
    if response.status_code >= 500:
        return (
            mode in ("json_schema", "json_object", "json")
            and "response_format" in text
            and any(word in text for word in _REJECTION_WORDS)
        )
    if not 400 <= response.status_code < 500 or response.status_code in _RETRYABLE_STATUS:
        return False
    return any(word in text for word in _FORMAT_WORDS)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1e3

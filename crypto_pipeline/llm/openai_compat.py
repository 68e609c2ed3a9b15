"""Any `/v1/chat/completions` endpoint (vLLM, Ollama, llama.cpp server, DeepSeek, Grok, OpenAI) as a
decision provider, over httpx: timeouts, retries with exponential backoff, JSON mode where the server
offers it, and tokens and cost counted per decision. The API key comes from the environment only."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from crypto_pipeline.state import MarketState

_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


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
        json_mode: bool = True,
        temperature: float = 0.0,
        max_tokens: int = 256,
        seed: int | None = 0,
        usd_per_1m_prompt_tokens: float = 0.0,
        usd_per_1m_completion_tokens: float = 0.0,
        concurrency: int = 4,
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
        self.json_mode = json_mode
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self.usd_per_1m_prompt_tokens = usd_per_1m_prompt_tokens
        self.usd_per_1m_completion_tokens = usd_per_1m_completion_tokens
        self.concurrency = max(1, concurrency)
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
            body = self._complete(build_messages(user))
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
        )

    def _complete(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            payload["seed"] = self.seed
        if self.json_mode:
            payload["response_format"] = {"type": "json_object"}
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential(multiplier=self.backoff_s, max=30),
            retry=retry_if_exception(_is_retryable),
        )
        for attempt in retrying:
            with attempt:
                response = self._client.post("/v1/chat/completions", json=payload)
                if (
                    response.status_code == 400
                    and "response_format" in payload
                    and _mentions_json_mode(response)
                ):
                    # The server has no JSON mode: remember, and ask again without it.
                    self.json_mode = False
                    payload.pop("response_format")
                    response = self._client.post("/v1/chat/completions", json=payload)
                if response.status_code in _RETRYABLE_STATUS:
                    raise _RetryableStatus(response.status_code)
                response.raise_for_status()
                return response.json()
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        if prompt_tokens is None and completion_tokens is None:
            return None
        return (
            (prompt_tokens or 0) * self.usd_per_1m_prompt_tokens
            + (completion_tokens or 0) * self.usd_per_1m_completion_tokens
        ) / 1e6


def _mentions_json_mode(response: httpx.Response) -> bool:
    text = response.text.lower()
    return "response_format" in text or "json" in text


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1e3

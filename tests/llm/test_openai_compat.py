"""OpenAICompatible against a real HTTP endpoint served on loopback: success, 500s, timeouts, no JSON mode."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from crypto_pipeline.llm.decision import Action
from crypto_pipeline.llm.openai_compat import OpenAICompatible
from crypto_pipeline.llm.prompts import PROMPT_VERSION, SYSTEM_PROMPT
from crypto_pipeline.llm.provider import DecisionProvider
from crypto_pipeline.state import MarketState
from tests.chat_completions import ChatCompletionsServer, completion

ANSWER = (
    '{"action": "BUY", "confidence": 70, "position_size_pct": 10, "stop_loss_pct": 2, "take_profit_pct": 5}'
)


@pytest.fixture
def server() -> Iterator[ChatCompletionsServer]:
    srv = ChatCompletionsServer(lambda body, n: (200, completion(ANSWER), 0.0))
    yield srv
    srv.close()


def _provider(server: ChatCompletionsServer, **kwargs: Any) -> OpenAICompatible:
    defaults: dict[str, Any] = {"timeout_s": 2.0, "max_attempts": 3, "backoff_s": 0.01}
    return OpenAICompatible(server.url, "served-model", **{**defaults, **kwargs})


def test_decides_and_counts_tokens_and_cost(
    server: ChatCompletionsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_LLM_KEY", "sk-secret-123")
    state = MarketState.example()
    with _provider(
        server, api_key_env="TEST_LLM_KEY", usd_per_1m_prompt_tokens=1.0, usd_per_1m_completion_tokens=2.0
    ) as provider:
        assert isinstance(provider, DecisionProvider)
        [d] = provider.decide([state])
    assert d.valid and d.action is Action.BUY and d.confidence == 70
    assert (d.prompt_tokens, d.completion_tokens) == (400, 30)
    assert d.cost_usd == pytest.approx((400 * 1.0 + 30 * 2.0) / 1e6)
    assert d.model_id == "served-model" and d.model_version == "served-model-2024"
    assert d.prompt_version == PROMPT_VERSION and d.prompt_hash and d.symbol == "BTC/USDT"
    headers, body = server.requests[0]
    assert headers["Authorization"] == "Bearer sk-secret-123"  # the key travels only in the header
    assert body["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert body["messages"][1]["content"] == state.to_prompt()
    assert body["response_format"] == {"type": "json_object"} and body["temperature"] == 0
    assert "sk-secret-123" not in d.model_dump_json()


def test_server_errors_are_retried_then_succeed(server: ChatCompletionsServer) -> None:
    server.handler = lambda body, n: (
        (500, {"error": "boom"}, 0.0) if n < 3 else (200, completion(ANSWER), 0.0)
    )
    with _provider(server) as provider:
        [d] = provider.decide([MarketState.example()])
    assert d.valid and d.action is Action.BUY
    assert len(server.requests) == 3


def test_persistent_500_gives_an_invalid_hold_with_the_reason(server: ChatCompletionsServer) -> None:
    server.handler = lambda body, n: (500, {"error": "down"}, 0.0)
    with _provider(server) as provider:
        decisions = provider.decide([MarketState.example(), MarketState.example()])
    assert all(d.action is Action.HOLD and not d.valid for d in decisions)
    assert "HTTP 500 after 3 attempts" in decisions[0].error
    assert len(server.requests) == 6


def test_timeouts_give_an_invalid_hold_within_the_budget(server: ChatCompletionsServer) -> None:
    # the server answers only once the test lets it: the client must give up by itself, twice
    released = threading.Event()
    server.handler = lambda body, n: (200, completion(ANSWER), released.wait(timeout=60) and 0.0)
    try:
        with _provider(server, timeout_s=0.2, max_attempts=2) as provider:
            [d] = provider.decide([MarketState.example()])
        assert not released.is_set()
    finally:
        released.set()
    assert d.action is Action.HOLD and not d.valid and "Timeout" in d.error
    assert len(server.requests) == 2


def test_client_errors_are_not_retried(server: ChatCompletionsServer) -> None:
    server.handler = lambda body, n: (401, {"error": "bad key"}, 0.0)
    with _provider(server) as provider:
        [d] = provider.decide([MarketState.example()])
    assert not d.valid and "401" in d.error
    assert len(server.requests) == 1


def test_falls_back_when_the_server_has_no_json_mode(server: ChatCompletionsServer) -> None:
    def handler(body: dict[str, Any], n: int) -> tuple[int, dict[str, Any], float]:
        if "response_format" in body:
            return 400, {"error": {"message": "response_format is not supported"}}, 0.0
        return 200, completion("Sure: " + ANSWER), 0.0

    server.handler = handler
    with _provider(server) as provider:
        first, second = provider.decide([MarketState.example()]), provider.decide([MarketState.example()])
    assert first[0].valid and second[0].valid
    # Asked once with JSON mode, then remembered that the server has none.
    assert [("response_format" in b) for _, b in server.requests] == [True, False, False]


def test_malformed_bodies_and_bad_text_are_invalid_holds(server: ChatCompletionsServer) -> None:
    server.handler = lambda body, n: (
        (200, "not json", 0.0) if n == 1 else (200, completion("I think BUY"), 0.0)
    )
    with _provider(server, concurrency=1) as provider:
        a, b = provider.decide([MarketState.example(), MarketState.example()])
    assert not a.valid and "endpoint error" in a.error
    assert not b.valid and b.raw_text == "I think BUY"


def test_unreachable_endpoint_is_an_invalid_hold() -> None:
    provider = OpenAICompatible("http://127.0.0.1:9", "m", timeout_s=0.5, max_attempts=2, backoff_s=0.01)
    [d] = provider.decide([MarketState.example()])
    assert not d.valid and "endpoint unavailable" in d.error


def test_states_are_sent_concurrently_and_answers_keep_their_order(server: ChatCompletionsServer) -> None:
    # the server answers only when all four requests are in at once: sent one by one, the barrier breaks
    together = threading.Barrier(4, timeout=30)

    def handler(body: dict[str, Any], n: int) -> tuple[int, dict[str, Any], float]:
        together.wait()
        action = "BUY" if "ETH" in body["messages"][1]["content"] else "HOLD"
        return 200, completion(f'{{"action": "{action}", "confidence": 50, "position_size_pct": 5}}'), 0.0

    server.handler = handler
    states = [MarketState.example().model_copy(update={"symbol": s}) for s in ["BTC/USDT", "ETH/USDT"] * 2]
    with _provider(server, concurrency=4, timeout_s=60) as provider:
        decisions = provider.decide(states)
    assert not together.broken and len(server.requests) == 4
    assert [d.action for d in decisions] == [Action.HOLD, Action.BUY, Action.HOLD, Action.BUY]
    assert [d.symbol for d in decisions] == [s.symbol for s in states]


def test_a_malformed_state_is_an_invalid_hold_not_an_exception() -> None:
    class Broken:
        symbol, at, portfolio = "BTC/USDT", None, None

        def to_prompt(self, anonymize: bool = False) -> str:
            raise RuntimeError("state cannot be encoded")

    provider = OpenAICompatible(base_url="http://127.0.0.1:9", model="m", max_attempts=1)
    [decision] = provider.decide([Broken()])  # type: ignore[list-item]
    assert not decision.valid and decision.action.value == "HOLD"
    assert "state cannot be encoded" in (decision.error or "")

"""OpenAICompatible against a real HTTP endpoint served on loopback: success, 500s, timeouts, structured-output fallback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from crypto_pipeline.llm.decision import Action, TradeDecision
from crypto_pipeline.llm.openai_compat import OpenAICompatible
from crypto_pipeline.llm.prompts import PROMPT_VERSION, SYSTEM_PROMPT, build_user_prompt
from crypto_pipeline.llm.provider import DecisionProvider
from crypto_pipeline.llm.schema import GRAMMAR_REASONING_CHARS, decision_grammar, decision_json_schema
from crypto_pipeline.state import MarketState
from tests.chat_completions import ChatCompletionsServer, completion, output_mode, refusing

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
    assert body["messages"][1]["content"] == build_user_prompt(state)
    assert body["response_format"]["type"] == "json_schema" and body["temperature"] == 0
    assert d.output_mode == "json_schema"
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


def test_the_schema_sent_is_the_decision_schema(server: ChatCompletionsServer) -> None:
    with _provider(server) as provider:
        provider.decide([MarketState.example()])
    fmt = server.requests[0][1]["response_format"]
    assert fmt["json_schema"]["strict"] is True and fmt["json_schema"]["name"]
    schema = fmt["json_schema"]["schema"]
    assert schema == decision_json_schema()
    # The same bounds as the validator: what the schema allows, TradeDecision accepts, and no more.
    props = schema["properties"]
    assert props["action"]["enum"] == [a.value for a in Action]
    for name in ("confidence", "position_size_pct", "stop_loss_pct", "take_profit_pct"):
        field = TradeDecision.model_fields[name]
        bounds = {type(m).__name__: m for m in field.metadata}
        assert (props[name]["minimum"], props[name]["maximum"]) == (bounds["Ge"].ge, bounds["Le"].le)
    assert props["reasoning"]["maxLength"] == GRAMMAR_REASONING_CHARS
    assert set(schema["required"]) == set(props) and schema["additionalProperties"] is False


def test_ollama_mode_sends_the_schema_as_format(server: ChatCompletionsServer) -> None:
    with _provider(server, schema_mode="ollama") as provider:
        [d] = provider.decide([MarketState.example()])
    body = server.requests[0][1]
    assert body["format"] == decision_json_schema() and "response_format" not in body
    assert d.valid and d.output_mode == "ollama"


@pytest.mark.parametrize(
    ("refused", "mode", "expected_modes"),
    [
        # auto: json_schema refused -> json_object; then every later request goes straight there
        ({"json_schema"}, "auto", ["json_schema", "json_object", "json_object"]),
        # neither structured form: down to plain text, the parser finds the JSON in the prose
        ({"json_schema", "json_object"}, "auto", ["json_schema", "json_object", "text", "text"]),
        ({"ollama", "json_object"}, "ollama", ["ollama", "json_object", "text", "text"]),
        ({"gbnf"}, "gbnf", ["gbnf", "json_object", "json_object"]),
        ({"json"}, "json", ["json", "text", "text"]),
        (set(), "text", ["text", "text"]),
    ],
)
def test_refused_modes_fall_back_and_are_recorded(
    server: ChatCompletionsServer, refused: set[str], mode: str, expected_modes: list[str]
) -> None:
    server.handler = refusing(refused, "Sure: " + ANSWER)
    with _provider(server, schema_mode=mode) as provider:
        first, second = provider.decide([MarketState.example()]), provider.decide([MarketState.example()])
    assert [output_mode(b) for _, b in server.requests] == expected_modes
    assert first[0].valid and second[0].valid and first[0].action is Action.BUY
    assert first[0].output_mode == second[0].output_mode == expected_modes[-1]


def test_a_500_that_rejects_the_response_format_steps_down_without_retrying(
    server: ChatCompletionsServer,
) -> None:
    """llama-cpp-python's server answers its request validation error as a 500 (the body below is its
    own, captured from 0.3.36): a refusal of the format, stepped down at once, not a fault to retry."""
    message = (
        "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
        "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}"
    )

    def handler(body: dict[str, Any], n: int) -> tuple[int, dict[str, Any], float]:
        if output_mode(body) == "json_schema":
            return 500, {"error": {"message": message, "type": "internal_server_error"}}, 0.0
        return 200, completion(ANSWER), 0.0

    server.handler = handler
    with _provider(server) as provider:
        [d] = provider.decide([MarketState.example()])
    assert [output_mode(b) for _, b in server.requests] == ["json_schema", "json_object"]
    assert d.valid and d.output_mode == "json_object"


def test_a_500_that_names_the_format_but_rejects_nothing_is_retried(server: ChatCompletionsServer) -> None:
    server.handler = lambda body, n: (
        (500, {"error": {"message": "CUDA out of memory while decoding json_schema"}}, 0.0)
        if n < 3
        else (200, completion(ANSWER), 0.0)
    )
    with _provider(server) as provider:
        [d] = provider.decide([MarketState.example()])
    assert [output_mode(b) for _, b in server.requests] == ["json_schema"] * 3
    assert d.valid and d.output_mode == "json_schema"


def test_gbnf_mode_sends_the_decision_grammar_and_json_mode_no_schema(server: ChatCompletionsServer) -> None:
    for mode in ("gbnf", "json"):
        with _provider(server, schema_mode=mode) as provider:
            [d] = provider.decide([MarketState.example()])
        assert d.valid and d.output_mode == mode
    gbnf_body, json_body = server.requests[0][1], server.requests[1][1]
    assert gbnf_body["grammar"] == decision_grammar("gbnf") and "response_format" not in gbnf_body
    assert json_body["response_format"] == {"type": "json_object"} and "grammar" not in json_body


def test_extra_body_fields_are_sent_beside_the_output_form(server: ChatCompletionsServer) -> None:
    with _provider(server, schema_mode="gbnf", extra_body={"repeat_penalty": 1.0}) as provider:
        [d] = provider.decide([MarketState.example()])
    body = server.requests[0][1]
    assert body["repeat_penalty"] == 1.0 and body["grammar"] == decision_grammar("gbnf") and d.valid


def test_a_client_error_about_something_else_is_no_fallback(server: ChatCompletionsServer) -> None:
    server.handler = lambda body, n: (404, {"error": {"message": "model 'x' not found"}}, 0.0)
    with _provider(server) as provider:
        [d] = provider.decide([MarketState.example()])
    assert not d.valid and "404" in d.error
    assert len(server.requests) == 1 and provider.output_mode == "json_schema"


def test_an_unknown_schema_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="schema_mode"):
        OpenAICompatible("http://127.0.0.1:9", "m", schema_mode="yaml")  # type: ignore[arg-type]


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
        symbol, at, portfolio = "BTC/USDT", MarketState.example().at, None

        @property
        def price(self) -> float:  # read first when the prompt is rendered
            raise RuntimeError("state cannot be encoded")

    provider = OpenAICompatible(base_url="http://127.0.0.1:9", model="m", max_attempts=1)
    [decision] = provider.decide([Broken()])  # type: ignore[list-item]
    assert not decision.valid and decision.action.value == "HOLD"
    assert "state cannot be encoded" in (decision.error or "")

"""The live session's providers beyond the rules: an OpenAI-compatible server (a real HTTP endpoint on
loopback) decides through the same loop, risk engine and journal; bad provider settings fail clearly."""

from __future__ import annotations

import json

import pytest

from crypto_pipeline.config import get_settings
from crypto_pipeline.errors import UserInputError
from crypto_pipeline.live.run import session_provider
from crypto_pipeline.live.session import LiveSession
from crypto_pipeline.registry import make_provider
from crypto_pipeline.warehouse import Warehouse
from tests.chat_completions import ChatCompletionsServer, completion

from .conftest import SYMBOLS, Running, clients_for, live_config

BUY = '{"action": "BUY", "confidence": 80, "position_size_pct": 10, "stop_loss_pct": 2, "take_profit_pct": 5}'


def test_an_openai_compatible_server_trades_a_live_session_through_the_risk_engine(
    start_exchange, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVE_TEST_LLM_KEY", "sk-live-provider-secret")
    seen: list[dict] = []

    def answer(body: dict, n: int) -> tuple[int, dict, float]:
        seen.append(body)
        return 200, completion(BUY), 0.0

    llm_server = ChatCompletionsServer(answer)
    try:
        config = live_config(
            provider="openai",
            openai_base_url=llm_server.url,
            openai_model="served-model",
            openai_api_key_env="LIVE_TEST_LLM_KEY",
        )
        choice = session_provider(config, get_settings())
        assert "served-model" in choice.note and choice.version is None
        server = start_exchange()
        warehouse = Warehouse(tmp_path / "wh")
        session = LiveSession(config, clients_for(server), choice.provider, warehouse)
        with Running(session, server) as running:
            running.step(1)
    finally:
        llm_server.close()
    decisions = warehouse.read("decisions")
    assert decisions.height >= len(SYMBOLS) and decisions["valid"].all()
    assert set(decisions["action"]) == {"BUY"}
    # Every request carried a prompt the loop built from a live state, and the server's BUYs reached the
    # exchange only through the risk engine (one verdict per decision; orders only where it approved).
    assert seen and all(any(s in json.dumps(b) for s in SYMBOLS) for b in seen)
    verdicts = warehouse.read("risk_verdicts")
    assert verdicts.height == decisions.height
    assert session.report.orders_submitted >= 1
    assert "sk-live-provider-secret" not in decisions.write_csv()


def test_provider_settings_that_cannot_work_fail_before_the_session() -> None:
    settings = get_settings()
    with pytest.raises(UserInputError, match="openai_base_url"):
        session_provider(live_config(provider="openai"), settings)
    with pytest.raises(UserInputError, match="unknown provider"):
        make_provider("gpt", settings, ref="champion", fallback=True)
    # The swarm's model member needs a registered crypto-policy (here, an empty registry).
    with pytest.raises(UserInputError, match="fine-tune first"):
        session_provider(live_config(provider="swarm"), settings)

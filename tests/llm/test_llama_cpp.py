"""llama.cpp on the embedded GGUF: the in-process `llama-cpp` provider under the GBNF grammar, and
llama.cpp's OpenAI-compatible server (`python -m llama_cpp.server`, started here on a free port) asked by
`OpenAICompatible` with and without the decision's JSON schema.

Both need the optional extra `crypto-pipeline[llama]` (llama-cpp-python, built from source with cmake).
`make test`'s set-up installs it (scripts/setup_venv.sh; `SETUP_LLAMA=0` leaves it out): without it these
tests skip and say why, unless the `CI` environment variable is set, where they fail: CI must run them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto_pipeline.llm.decision import Action
from crypto_pipeline.llm.llama_cpp import EXTRA_HINT, LlamaCpp, llama_cpp_available
from crypto_pipeline.llm.openai_compat import OpenAICompatible
from crypto_pipeline.llm.schema import decision_grammar


@pytest.fixture(scope="module", autouse=True)
def _llama_cpp_installed() -> None:
    """Skips the module without the extra, fails it in CI (as the recorded data's tests do)."""
    if not llama_cpp_available():
        message = f"the optional extra is not installed: {EXTRA_HINT}"
        if os.environ.get("CI"):
            pytest.fail(
                f"{message}; CI must run the llama.cpp tests (scripts/setup_venv.sh installs it)",
                pytrace=False,
            )
        pytest.skip(message)


def test_the_gbnf_grammar_parses_in_llama_cpp() -> None:
    import llama_cpp

    grammar = llama_cpp.LlamaGrammar.from_string(decision_grammar("gbnf"), verbose=False)
    assert grammar is not None


@pytest.fixture(scope="module")
def real_states() -> list:
    """4 states from the recorded 2024 data, over symbols and days (as bench/bench_llm.py picks them); built
    once for the module (about 2 s each)."""
    from datetime import UTC, datetime, timedelta

    from crypto_pipeline.state.build import build_market_state_from_recorded

    symbols = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT")
    start = datetime(2024, 6, 1, 12, tzinfo=UTC)
    return [
        build_market_state_from_recorded(symbols[i % len(symbols)], start + timedelta(hours=31 * i))
        for i in range(4)
    ]


@pytest.fixture(scope="module")
def in_process(real_states: list) -> list:
    """`LlamaCpp`'s decisions on the 4 states, shared by the tests that check them and compare the server to
    them. One thread: llama.cpp's threads wait for each other spinning, and on a busy 2-core machine two
    threads took 36 to 116 s a state where one took 6 to 9 s)."""
    return LlamaCpp(n_threads=1).decide(real_states)


@pytest.mark.slow
@pytest.mark.requires_data("binance-spot-2024")
def test_llama_cpp_decides_real_states_all_valid(real_states: list, in_process: list) -> None:
    decisions = in_process
    assert all(d.valid for d in decisions), [(d.error, d.raw_text) for d in decisions]
    assert all(d.output_mode == "gbnf" and d.provider == "llama-cpp" for d in decisions)
    assert all(d.raw_text.startswith('{"action": "') and d.raw_text.endswith('"}') for d in decisions)
    assert all(d.prompt_tokens > 300 and 0 < d.completion_tokens for d in decisions)
    assert [d.symbol for d in decisions] == [s.symbol for s in real_states]


def test_a_missing_gguf_is_an_invalid_hold(tmp_path: Path) -> None:
    from crypto_pipeline.state import MarketState

    [d] = LlamaCpp(tmp_path / "none.gguf").decide([MarketState.example()])
    assert d.action is Action.HOLD and not d.valid and "failed to load" in d.error


def test_a_server_that_cannot_start_says_so_with_its_log(tmp_path: Path) -> None:
    from crypto_pipeline.llm.llama_server import llama_server

    log = tmp_path / "stderr.log"
    with pytest.raises(RuntimeError, match="exited"), llama_server(tmp_path / "none.gguf", log_path=log):
        pass
    assert "none.gguf" in log.read_text()


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server on the embedded GGUF, one thread (the machine is shared); its stderr is kept so that a
    failure shows the server's own traceback."""
    from crypto_pipeline.llm.llama_server import llama_server

    log = tmp_path_factory.mktemp("llama_server") / "stderr.log"
    try:
        with llama_server(n_threads=1, log_path=log) as url:
            yield url
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"{exc}\n{log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.requires_data("binance-spot-2024")
def test_llama_cpp_server_with_the_schema_answers_valid_decisions(
    llama_server: str, real_states: list
) -> None:
    """llama-cpp-python's server refuses the json_schema type with a 500 (its request validation error):
    `auto` steps down to json_object + schema, which the server turns into a grammar, and every answer is
    valid. With JSON mode only, the small model is free to nest or rename keys. The valid rates are
    printed (pytest -s); bench/bench_llm_server.py measures them on 16 states."""
    states = real_states
    with OpenAICompatible(
        llama_server, "smollm2", api_key_env=None, schema_mode="auto", timeout_s=300, concurrency=1
    ) as provider:
        decisions = provider.decide(states)
        assert provider.output_mode == "json_object"
    assert all(d.valid and d.output_mode == "json_object" for d in decisions), [
        (d.output_mode, d.error, d.raw_text) for d in decisions
    ]
    assert {d.symbol for d in decisions} == {s.symbol for s in states}
    # JSON mode only: the server holds the model to JSON (an object, cut at max_tokens when it rambles),
    # but not to the decision's keys: on these states it nests some of them under "action".
    with OpenAICompatible(
        llama_server, "smollm2", api_key_env=None, schema_mode="json", timeout_s=300, concurrency=1
    ) as provider:
        free = provider.decide(states[:1])  # one: free JSON runs to max_tokens (about 12 s a state)
    assert all(d.output_mode == "json" and d.raw_text.startswith("{") for d in free), free
    print(
        f"\nllama.cpp server valid rate: with the schema {sum(d.valid for d in decisions)}/{len(decisions)}, "
        f"JSON mode only {sum(d.valid for d in free)}/{len(free)}"
    )


@pytest.mark.slow
@pytest.mark.requires_data("binance-spot-2024")
def test_llama_cpp_server_under_the_grammar_decides_as_the_in_process_provider(
    llama_server: str, real_states: list, in_process: list
) -> None:
    """The decision grammar sent as the server's `grammar` field, greedy, with llama.cpp's in-process
    repeat penalty (1.0; the server's default is 1.1): the same decisions as `LlamaCpp` on the same GGUF."""
    states = real_states[:2]
    with OpenAICompatible(
        llama_server,
        "smollm2",
        api_key_env=None,
        schema_mode="gbnf",
        timeout_s=300,
        concurrency=1,
        extra_body={"repeat_penalty": 1.0},
    ) as provider:
        served = provider.decide(states)
    local = in_process[:2]
    assert all(d.valid and d.output_mode == "gbnf" for d in served), [(d.error, d.raw_text) for d in served]
    assert [d.raw_text for d in served] == [d.raw_text for d in local]

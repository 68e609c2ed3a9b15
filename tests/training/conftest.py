"""A small real dataset: BTC/USDT market states of Feb-Mar 2024 from the recorded 1h bars."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from crypto_pipeline.config import SHARED_MARKET_DATA
from crypto_pipeline.features import compute_features
from crypto_pipeline.state import STATE_TIMEFRAMES
from crypto_pipeline.state.build import market_state_table
from crypto_pipeline.training.dataset import DatasetConfig, SftDataset, build_sft_dataset
from tests.chat_completions import ChatCompletionsServer, completion

DATA_2024 = SHARED_MARKET_DATA / "binance-spot-2024"  # for benchmarks; tests ask the `recorded` fixture
START = datetime(2024, 2, 1, tzinfo=UTC)
END = datetime(2024, 4, 1, tzinfo=UTC)
SMALL_CONFIG = DatasetConfig(val_days=10, test_days=10)


def recorded_bars(
    timeframe: str, symbol: str = "BTC/USDT", end: datetime = END, data_dir: Path = DATA_2024
) -> pl.DataFrame:
    bars = pl.read_parquet(data_dir / f"bars_{timeframe}.parquet").filter(pl.col("symbol") == symbol)
    bars = bars.with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))
    return bars.filter(pl.col("timestamp") < end)


def btc_states_frame() -> tuple[pl.DataFrame, pl.DataFrame]:
    """(market states, 1h bars) of BTC/USDT Feb-Mar 2024, outside pytest (benchmarks)."""
    feats = pl.concat(
        [
            compute_features(recorded_bars(tf), tf).with_columns(pl.lit(tf).alias("timeframe"))
            for tf in STATE_TIMEFRAMES
        ],
        how="diagonal_relaxed",
    )
    bars = recorded_bars("1h")
    points = bars.filter(pl.col("timestamp") >= START).select(
        "symbol", (pl.col("timestamp") + timedelta(hours=1)).alias("at")
    )
    return market_state_table(feats, points), bars


@pytest.fixture(scope="session")
def btc_features(recorded) -> pl.DataFrame:
    data_dir = recorded("binance-spot-2024")
    frames = [
        compute_features(recorded_bars(tf, data_dir=data_dir), tf).with_columns(pl.lit(tf).alias("timeframe"))
        for tf in STATE_TIMEFRAMES
    ]
    return pl.concat(frames, how="diagonal_relaxed")


@pytest.fixture(scope="session")
def btc_bars_1h(recorded) -> pl.DataFrame:
    return recorded_bars("1h", data_dir=recorded("binance-spot-2024"))


@pytest.fixture(scope="session")
def btc_states(btc_features: pl.DataFrame, btc_bars_1h: pl.DataFrame) -> pl.DataFrame:
    points = btc_bars_1h.filter(pl.col("timestamp") >= START).select(
        "symbol", (pl.col("timestamp") + timedelta(hours=1)).alias("at")
    )
    return market_state_table(btc_features, points)


@pytest.fixture(scope="session")
def btc_dataset(btc_states: pl.DataFrame, btc_bars_1h: pl.DataFrame) -> SftDataset:
    return build_sft_dataset(btc_states, btc_bars_1h, SMALL_CONFIG)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-64 Llama with the SmolLM2 tokenizer and chat template, saved as a folder: a real
    transformers model that fine-tunes in seconds (the embedded SmolLM2 takes about a minute a step here)."""
    from transformers import AutoTokenizer

    from crypto_pipeline.config import get_settings
    from crypto_pipeline.llm.base_model import ensure_base_model
    from tests.tiny_llama import tiny_llama

    tokenizer = AutoTokenizer.from_pretrained(ensure_base_model(get_settings().models_dir))
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- a teacher behind a real OpenAI-compatible HTTP endpoint on loopback --------------------------------

PROMPT_TOKENS, COMPLETION_TOKENS = 500, 40


def teacher_answer(user_prompt: str) -> tuple[str, str]:
    """What the served 'model' says: BUY when the 24 h change is positive, else SELL (a rule the test
    can recompute from the prompt alone)."""
    down = re.search(r"chg24h (-?)", user_prompt).group(1) == "-"  # type: ignore[union-attr]
    return ("SELL", "Teacher: the day is down.") if down else ("BUY", "Teacher: the day is up.")


class ChatServer(ChatCompletionsServer):
    """The teacher's endpoint: it answers `teacher_answer(user prompt)` and reports the same token usage
    for every call."""

    prompt_tokens, completion_tokens = PROMPT_TOKENS, COMPLETION_TOKENS
    answer = staticmethod(teacher_answer)

    def __init__(self) -> None:
        super().__init__(self._teach)

    @staticmethod
    def _teach(body: dict, call_no: int) -> tuple[int, dict, float]:
        action, reasoning = teacher_answer(body["messages"][-1]["content"])
        content = json.dumps(
            {
                "action": action,
                "confidence": 70,
                "position_size_pct": 10 if action == "BUY" else 0,
                "stop_loss_pct": 2,
                "take_profit_pct": 4,
                "reasoning": reasoning,
            }
        )
        return 200, completion(content, PROMPT_TOKENS, COMPLETION_TOKENS, model="teacher-7b"), 0.0


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer()
    yield server
    server.close()

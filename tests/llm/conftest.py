"""Shared fixtures: a tiny Llama (fast) and the real embedded SmolLM2 folder (converted once)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crypto_pipeline.config import get_settings
from crypto_pipeline.state import MarketState, Portfolio


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted embedded base model, cached under warehouse/models (about 20 s the first time)."""
    from crypto_pipeline.llm.base_model import ensure_base_model

    return ensure_base_model(get_settings().models_dir)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def tiny_model(smollm2_tokenizer: Any) -> Any:
    """A 2-layer, hidden-64 Llama with the SmolLM2 vocabulary: random but deterministic, ~3M parameters.

    A wide initialisation makes its greedy output vary with the prompt, so equality checks between
    generation paths are meaningful (a near-zero init would emit the same token everywhere).
    """
    from tests.tiny_llama import tiny_llama

    return tiny_llama(smollm2_tokenizer, initializer_range=0.2).eval()


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any, smollm2_tokenizer: Any) -> Path:
    """The tiny Llama saved as a Hugging Face folder, for the loading paths (folder, hub id, CLI)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def states() -> Callable[[int], list[MarketState]]:
    """`states(n)`: n distinct, realistic states derived from the fixed example (no market data needed)."""
    return varied_states


def varied_states(n: int) -> list[MarketState]:
    base = MarketState.example()
    symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
    states = []
    for i in range(n):
        states.append(
            base.model_copy(
                update={
                    "symbol": symbols[i % 3],
                    "change_1h": round(-2.0 + 0.37 * i, 2),
                    "price": base.price * (1 + 0.01 * i),
                    "portfolio": None if i % 2 else Portfolio(cash=10_000.0, equity=10_000.0),
                }
            )
        )
    return states

"""LLM decisions cached by (provider/model version, prompt hash): a repeated backtest costs nothing.

The prompt hash covers exactly what the model is shown (state, portfolio, system prompt), so a hit is
the decision the model would make again with greedy decoding. Storage is one Parquet file, read and
written by `load_decisions` / `save_decisions` only, so it can move into the warehouse's
`decision_cache` table without touching the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from crypto_pipeline.llm.decision import TradeDecision
from crypto_pipeline.llm.prompts import SYSTEM_PROMPT, build_user_prompt, prompt_hash
from crypto_pipeline.llm.provider import DecisionProvider, decide_safely, state_meta
from crypto_pipeline.state import MarketState


def load_decisions(path: Path) -> dict[tuple[str, str], str]:
    if not path.exists():
        return {}
    frame = pl.read_parquet(path)
    return {(v, h): d for v, h, d in frame.select("model_version", "prompt_hash", "decision").iter_rows()}


def save_decisions(path: Path, rows: dict[tuple[str, str], str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame(
        [(v, h, d) for (v, h), d in rows.items()],
        schema={"model_version": pl.String, "prompt_hash": pl.String, "decision": pl.String},
        orient="row",
    )
    tmp = path.with_suffix(".tmp")
    frame.write_parquet(tmp)
    tmp.replace(path)


def provider_version(provider: DecisionProvider) -> str:
    """What identifies a provider's answers: its name and model version (or model id)."""
    version = getattr(provider, "model_version", None) or getattr(provider, "model_id", None) or ""
    return f"{getattr(provider, 'name', type(provider).__name__)}:{version}"


@dataclass
class DecisionCache:
    """Wraps `decide_safely`: hits come from the cache, misses go to the provider and are stored."""

    path: Path | None = None
    rows: dict[tuple[str, str], str] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def __post_init__(self) -> None:
        if self.path is not None:
            self.rows = load_decisions(self.path)

    def decide(self, provider: DecisionProvider, states: list[MarketState]) -> list[TradeDecision]:
        version = provider_version(provider)
        system = getattr(provider, "system_prompt", SYSTEM_PROMPT)
        keys = [(version, prompt_hash(build_user_prompt(s), system)) for s in states]
        out: list[TradeDecision | None] = [None] * len(states)
        todo = []
        for i, key in enumerate(keys):
            hit = self.rows.get(key)
            if hit is not None:
                out[i] = TradeDecision.model_validate_json(hit).with_meta(**state_meta(states[i]))
                self.hits += 1
            else:
                todo.append(i)
        if todo:
            fresh = decide_safely(provider, [states[i] for i in todo])
            self.misses += len(todo)
            for i, decision in zip(todo, fresh, strict=True):
                out[i] = decision
                # A provider failure (no model output) is not an answer to cache.
                if decision.valid or decision.raw_text is not None:
                    self.rows[keys[i]] = decision.model_dump_json()
        return [d for d in out if d is not None]

    def save(self) -> None:
        if self.path is not None:
            save_decisions(self.path, self.rows)

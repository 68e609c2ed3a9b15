"""LLM decisions cached by (provider, model version, prompt hash): a repeated backtest costs nothing.

The prompt hash covers exactly what the model is shown (state, portfolio, system prompt), so a hit is
the decision the model would make again with greedy decoding. The rows live in the warehouse's
`decision_cache` table (`warehouse.tables.DECISION_CACHE`, one small unpartitioned file keyed by
provider, model version and prompt hash); `load_decisions` / `save_decisions` are its only readers and
writers here. Without a warehouse the cache lives in memory for one run.

One cache may serve several threads at once (the folds of a walk-forward decide concurrently): its
bookkeeping is locked, the provider call is not (the fold batcher gathers those calls into one)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from crypto_pipeline.llm.decision import TradeDecision
from crypto_pipeline.llm.prompts import PROMPT_VERSION, SYSTEM_PROMPT, build_user_prompt, prompt_hash
from crypto_pipeline.llm.provider import DecisionProvider, decide_safely, state_meta
from crypto_pipeline.state import MarketState

TABLE = "decision_cache"
Key = tuple[str, str, str]  # provider, model version, prompt hash


def load_decisions(warehouse: Any) -> dict[Key, str]:
    """Every cached decision (as JSON) in `warehouse`'s `decision_cache` table."""
    if not (warehouse.table_dir(TABLE) / "data.parquet").exists():
        return {}
    frame = warehouse.read(TABLE, columns=["provider", "model_version", "prompt_hash", "decision"])
    return {(p, v, h): d for p, v, h, d in frame.iter_rows()}


def save_decisions(warehouse: Any, rows: dict[Key, TradeDecision]) -> None:
    """Upsert new decisions (raw table: the key is unique, a repeated write is a no-op)."""
    if not rows:
        return
    frame = pl.DataFrame(
        [
            {
                "provider": p,
                "model_version": v,
                "prompt_hash": h,
                "prompt_version": PROMPT_VERSION,
                "decision": d.model_dump_json(),
                "raw_output": d.raw_text,
                "latency_ms": d.latency_ms,
                "prompt_tokens": d.prompt_tokens,
                "completion_tokens": d.completion_tokens,
            }
            for (p, v, h), d in rows.items()
        ],
        schema_overrides={"latency_ms": pl.Float64, "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64},
    )
    warehouse.upsert(TABLE, frame)


def provider_identity(provider: DecisionProvider) -> tuple[str, str]:
    """What identifies a provider's answers: its name and model version (or model id), and the number
    format where it is not float32 (`crypto-policy:3@bfloat16`): rounded weights can answer differently,
    and float32 keys stay what they were."""
    version = str(getattr(provider, "model_version", None) or getattr(provider, "model_id", None) or "")
    members = getattr(provider, "members", None)  # a swarm answers in its members' formats
    formats = {getattr(p, "dtype", None) for p in (members if members is not None else [provider])}
    rounded = sorted(f for f in formats if isinstance(f, str) and f != "float32")
    if rounded:
        version = f"{version}@{'+'.join(rounded)}"
    return getattr(provider, "name", type(provider).__name__), version


@dataclass
class Tally:
    """One caller's hits and misses (a fold's, while other folds use the same cache)."""

    hits: int = 0
    misses: int = 0


@dataclass
class DecisionCache:
    """Wraps `decide_safely`: hits come from the cache, misses go to the provider and are stored.
    `warehouse` is a `crypto_pipeline.warehouse.Warehouse` (None: in memory only)."""

    warehouse: Any = None
    rows: dict[Key, str] = field(default_factory=dict)
    fresh: dict[Key, TradeDecision] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    # Decisions are written to the warehouse as they are made, at most this many seconds apart, so a run
    # cut off (a timeout, a kill) keeps what it decided; a fast provider (the rules) is not written per call.
    flush_every_s: float = 5.0
    _flushed_at: float = field(default_factory=time.monotonic, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __post_init__(self) -> None:
        if self.warehouse is not None:
            self.rows = load_decisions(self.warehouse)

    def decide(
        self, provider: DecisionProvider, states: list[MarketState], *, tally: Tally | None = None
    ) -> list[TradeDecision]:
        """Decisions on `states`: cached ones from the cache, the rest from `provider` in one call.
        `tally` also counts this call's hits and misses (the cache's own counts are every caller's)."""
        name, version = provider_identity(provider)
        system = getattr(provider, "system_prompt", SYSTEM_PROMPT)
        keys = [(name, version, prompt_hash(build_user_prompt(s), system)) for s in states]
        out: list[TradeDecision | None] = [None] * len(states)
        todo = []
        with self._lock:
            for i, key in enumerate(keys):
                hit = self.rows.get(key)
                if hit is not None:
                    out[i] = TradeDecision.model_validate_json(hit).with_meta(**state_meta(states[i]))
                else:
                    todo.append(i)
            self.hits += len(states) - len(todo)
            if tally is not None:
                tally.hits += len(states) - len(todo)
        if todo:
            made = decide_safely(provider, [states[i] for i in todo])  # unlocked: other folds join the call
            with self._lock:
                self.misses += len(todo)
                if tally is not None:
                    tally.misses += len(todo)
                for i, decision in zip(todo, made, strict=True):
                    out[i] = decision
                    # A provider failure (no model output) is not an answer to cache.
                    if decision.valid or decision.raw_text is not None:
                        self.rows[keys[i]] = decision.model_dump_json()
                        self.fresh[keys[i]] = decision
                if time.monotonic() - self._flushed_at >= self.flush_every_s:
                    self.save()
        return [d for d in out if d is not None]

    def save(self) -> None:
        """Write the decisions made since the last save into the warehouse."""
        with self._lock:
            if self.warehouse is not None:
                save_decisions(self.warehouse, self.fresh)
            self.fresh = {}
            self._flushed_at = time.monotonic()

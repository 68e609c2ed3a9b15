"""The versioned prompts: one system prompt shared by every state (so its KV cache can be reused) and a
user prompt built from `MarketState.to_prompt()`, optionally with recent trades and the portfolio.

Change the wording -> bump `PROMPT_VERSION`: every decision records it with the prompt's hash, so a
backtest or a fine-tune can always tell which prompt produced which answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from crypto_pipeline.llm.decision import (
    CONFIDENCE_RANGE,
    MAX_REASONING_CHARS,
    POSITION_SIZE_RANGE,
    STOP_LOSS_RANGE,
    TAKE_PROFIT_RANGE,
)

if TYPE_CHECKING:
    from crypto_pipeline.state import MarketState, Portfolio

PROMPT_VERSION = "decision-v1"
MAX_RECENT_TRADES = 5


def _bounds(r: tuple[float, float]) -> str:
    return f"{r[0]:g}-{r[1]:g}"


SYSTEM_PROMPT = (
    "You are a disciplined swing trader of spot crypto. You read one market snapshot and decide.\n"
    "Rules: spot only, no leverage, no shorts; SELL only reduces or closes a long you hold. "
    "BUY only with a clear edge (trend and momentum agree); otherwise HOLD. "
    "Size by confidence; set stop loss near 1-2x ATR%.\n"
    "Answer with one JSON object and nothing else:\n"
    f'{{"action": "BUY"|"SELL"|"HOLD", "confidence": {_bounds(CONFIDENCE_RANGE)}, '
    f'"position_size_pct": {_bounds(POSITION_SIZE_RANGE)}, "stop_loss_pct": {_bounds(STOP_LOSS_RANGE)}, '
    f'"take_profit_pct": {_bounds(TAKE_PROFIT_RANGE)}, "reasoning": "<= {MAX_REASONING_CHARS // 3} chars"}}'
)


class RecentTrade(BaseModel):
    """A fill the account made before the decision time, shown to the model as context."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    side: Literal["BUY", "SELL"]
    price: float
    realized_pnl_pct: float | None = None


def build_user_prompt(
    state: MarketState,
    recent_trades: Sequence[RecentTrade] = (),
    portfolio: Portfolio | None = None,
    anonymize: bool = False,
) -> str:
    """The user message for one state. Trades after `state.at` are dropped: they are the future."""
    if portfolio is not None:
        state = state.with_portfolio(portfolio)
    text = state.to_prompt(anonymize=anonymize)
    known = sorted((t for t in recent_trades if t.at <= state.at), key=lambda t: t.at)[-MAX_RECENT_TRADES:]
    if known:
        lines = []
        for trade in known:
            pnl = "" if trade.realized_pnl_pct is None else f" pnl {trade.realized_pnl_pct:+.2f}%"
            when = "" if anonymize else f"{trade.at:%m-%d %H:%M} "
            price = "" if anonymize else f" @ {trade.price:.6g}"
            lines.append(f"{when}{trade.side}{price}{pnl}")
        text += "\nrecent trades: " + "; ".join(lines)
    return text


def build_messages(user_prompt: str, system_prompt: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user_prompt}]


def prompt_hash(user_prompt: str, system_prompt: str = SYSTEM_PROMPT) -> str:
    """Short, stable fingerprint of exactly what the model was shown."""
    digest = hashlib.sha256(f"{system_prompt}\x00{user_prompt}".encode()).hexdigest()
    return digest[:16]

"""The versioned prompts: one system prompt shared by every state (so its KV cache can be reused) and a
user prompt rendered from a `MarketState` (`render_state`), optionally with recent trades and the portfolio.

All prompt text lives in this module, the anonymized variant of the leakage audit included
(`anonymized(state)`); `crypto_pipeline.state` holds the value types only and renders nothing. Change the
wording -> bump `PROMPT_VERSION`: every decision and every stored market state records it with the prompt's
hash, so a backtest or a fine-tune can always tell which prompt produced which answer; the golden test
in tests/llm/test_prompts.py fails on any change of the rendering that does not bump it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from crypto_pipeline.llm.decision import (
    CONFIDENCE_RANGE,
    MAX_REASONING_CHARS,
    POSITION_SIZE_RANGE,
    STOP_LOSS_RANGE,
    TAKE_PROFIT_RANGE,
)
from crypto_pipeline.state import STATE_TIMEFRAMES, MarketState, Portfolio

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
    """The user message for one state. Trades after `state.at` are dropped: they are the future.

    An `AnonymizedState` (see `anonymized`) is rendered anonymized whatever `anonymize` says."""
    if portfolio is not None:
        state = state.with_portfolio(portfolio)
    anonymize = anonymize or isinstance(state, AnonymizedState)
    text = render_state(state, anonymize=anonymize)  # a state that cannot be encoded raises here
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


class AnonymizedState(MarketState):
    """A state whose prompt hides the symbol, the dates and every price level: what the anonymized leakage
    audit hands to a provider, which renders it through `build_user_prompt` like any other state."""


def anonymized(state: MarketState) -> AnonymizedState:
    """`state`, to be rendered anonymized by every provider (the audit compares its decisions with the
    plain ones: a model that only decides well when it sees the symbol and date recalls history)."""
    return AnonymizedState(**state.model_dump())


def build_messages(user_prompt: str, system_prompt: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user_prompt}]


def prompt_hash(user_prompt: str, system_prompt: str = SYSTEM_PROMPT) -> str:
    """Short, stable fingerprint of exactly what the model was shown."""
    digest = hashlib.sha256(f"{system_prompt}\x00{user_prompt}".encode()).hexdigest()
    return digest[:16]


# --- the state encoding ----------------------------------------------------------------------------

# Column order of the per-timeframe rows, with the digits each value is shown with.
_TIMEFRAME_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("rsi", "rsi_14", 0),
    ("macdh%", "macd_hist_pct", 2),
    ("ema9/21%", "ema_9_vs_21_pct", 2),
    ("px/ema50%", "close_vs_ema_50_pct", 1),
    ("px/ema200%", "close_vs_ema_200_pct", 1),
    ("atr%", "atr_pct", 2),
    ("bb%b", "bb_pctb", 2),
    ("chg%", "change_pct", 2),
)


def render_state(state: MarketState, anonymize: bool = False) -> str:
    """Compact text for the LLM (at most 350 SmolLM2 tokens with four timeframes).

    `anonymize` drops the symbol, the date and every absolute price or volume, leaving only
    ratios: a model that still predicts well on anonymized prompts is not recalling history. An
    `AnonymizedState` is always rendered so.
    """
    anonymize = anonymize or isinstance(state, AnonymizedState)
    lines: list[str] = []
    head = [] if anonymize else [f"{state.symbol} {state.at:%Y-%m-%d %H:%M}Z price {_num(state.price)}"]
    head += [f"chg1h {_pct(state.change_1h)}", f"chg24h {_pct(state.change_24h)}"]
    if state.volume_24h is not None and not anonymize:
        head.append(f"vol24h {_num(state.volume_24h)}")
    head.append(f"vol/avg7d {_fmt(state.volume_vs_avg_7d, 2)}")
    lines.append(" ".join(head))
    # One row per timeframe keeps the prompt short: numbers dominate the token count.
    lines.append(" ".join(["tf", *(label for label, _, _ in _TIMEFRAME_COLUMNS)]))
    for tf in STATE_TIMEFRAMES:
        ind = state.timeframes.get(tf)
        if ind is None:
            continue
        lines.append(" ".join([tf, *(_fmt(getattr(ind, f), d) for _, f, d in _TIMEFRAME_COLUMNS)]))
    if state.order_book is not None:
        book = state.order_book
        lines.append(f"book spread {_fmt(book.spread_bps, 1)}bp imbalance {_fmt(book.imbalance, 2)}")
    if state.portfolio is not None:
        pf = state.portfolio
        if pf.position_qty > 0:
            exposure = _fmt(pf.exposure_pct(state.price), 0)
            lines.append(
                f"position long {exposure}% of equity, pnl {_pct(pf.unrealized_pnl_pct(state.price))}"
            )
        else:
            lines.append("position flat")
        if not anonymize:
            lines.append(f"cash {_num(pf.cash)} equity {_num(pf.equity)}")
    return "\n".join(lines)


def _fmt(value: float | None, digits: int) -> str:
    if value is None or math.isnan(value):
        return "na"
    return f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0 turns -0.0 into 0.0: no "-0.00"


def _pct(value: float | None) -> str:
    return "na" if value is None else f"{_fmt(value, 2)}%"


def _num(value: float) -> str:
    """Prices and volumes with about six significant digits (compact for the tokenizer)."""
    if value >= 1e9:
        return f"{value / 1e9:.2f}B"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 100:
        return f"{value:.1f}"
    return f"{value:.6g}"

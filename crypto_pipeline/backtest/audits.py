"""Leakage audits that run with every policy backtest; a failed audit blocks promotion.

- truncation: a sample of decisions is re-made from data cut at the decision time (and, in the
  shuffle-future variant, with every bar after it shuffled). Prompts and decisions must be identical:
  a policy that reads anything after t is caught.
- anonymized vs plain: the same states with symbol, dates and price levels hidden; a large disagreement
  points to memorization of the period rather than reading the indicators.
- one-bar lag: the same decisions filled one bar later; an edge that vanishes under lag was never real.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from crypto_pipeline.features import compute_features
from crypto_pipeline.live.states import rolling_state_table
from crypto_pipeline.llm.action_slot import scored_action
from crypto_pipeline.llm.decision import TradeDecision
from crypto_pipeline.llm.prompts import anonymized, build_user_prompt
from crypto_pipeline.llm.provider import DecisionProvider, decide_safely
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.state import MarketState
from crypto_pipeline.state.build import market_state_table, states_from_table

ProviderFactory = Callable[[dict[str, pl.DataFrame]], DecisionProvider]
Decide = Callable[[DecisionProvider, list[MarketState]], list[TradeDecision]]


@dataclass(frozen=True)
class AuditResult:
    name: str
    passed: bool
    detail: str
    figures: dict[str, float] = field(default_factory=dict)


def _same(a: TradeDecision, b: TradeDecision) -> bool:
    keys = ("action", "confidence", "position_size_pct", "stop_loss_pct", "take_profit_pct", "valid")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def _states(
    bars_by_tf: dict[str, pl.DataFrame], symbol: str, at: datetime, lookback_days: int | None = None
) -> MarketState:
    """The state of `symbol` at `at` from `bars_by_tf`: from every timeframe's bars as given, or, with
    `lookback_days`, the way a backtest and a live session build it (the newest `lookback_days` of the
    finest timeframe's bars closed by `at`, coarser ones resampled from them)."""
    if lookback_days is not None:
        base = min(bars_by_tf, key=lambda tf: Timeframe.parse(tf).duration)
        table = rolling_state_table(bars_by_tf[base], Timeframe.parse(base), [symbol], [at], lookback_days)
        return states_from_table(table.filter(pl.col("symbol") == symbol))[0]
    frames = [
        compute_features(b.filter(pl.col("symbol") == symbol), tf).with_columns(pl.lit(tf).alias("timeframe"))
        for tf, b in bars_by_tf.items()
    ]
    table = market_state_table(
        pl.concat(frames, how="diagonal_relaxed"),
        pl.DataFrame({"symbol": [symbol], "at": [at]}),
        tuple(bars_by_tf),
    )
    return states_from_table(table)[0]


def _cut(
    bars_by_tf: dict[str, pl.DataFrame], at: datetime, *, shuffle: bool, seed: int
) -> dict[str, pl.DataFrame]:
    """Bars as they were known at `at` (closed by then); with `shuffle`, the later bars stay but their
    values are permuted, so a policy reading the future sees a different future."""
    out = {}
    for tf, bars in bars_by_tf.items():
        closed = pl.col("timestamp") + Timeframe.parse(tf).duration <= at
        past = bars.filter(closed)
        if shuffle:
            future = bars.filter(~closed)
            values = ["open", "high", "low", "close", "volume"]
            permuted = future.select(values).sample(fraction=1.0, shuffle=True, seed=seed)
            future = pl.concat([future.drop(values), permuted], how="horizontal").select(bars.columns)
            out[tf] = pl.concat([past, future]).sort("symbol", "timestamp")
        else:
            out[tf] = past
    return out


def truncation_audit(
    make_provider: ProviderFactory,
    bars_by_tf: dict[str, pl.DataFrame],
    samples: Sequence[tuple[str, datetime]],
    *,
    shuffle_future: bool = False,
    seed: int = 0,
    decide: Decide = decide_safely,
    lookback_days: int | None = None,
) -> AuditResult:
    """Re-make each sampled (symbol, decision time) from cut data; every prompt and decision must match.
    `make_provider` builds the policy from the bars it may use (policies that hold data get the cut data;
    an LLM ignores them). `decide` makes the decision on full data (e.g. from the decision cache); the
    decision on cut data is always asked afresh."""
    name = "shuffle_future" if shuffle_future else "truncation"
    full_provider = make_provider(bars_by_tf)
    mismatches = []
    for symbol, at in samples:
        full_state = _states(bars_by_tf, symbol, at, lookback_days)
        cut = _cut(bars_by_tf, at, shuffle=shuffle_future, seed=seed)
        cut_state = _states(cut, symbol, at, lookback_days)
        same_prompt = build_user_prompt(full_state) == build_user_prompt(cut_state)
        full = decide(full_provider, [full_state])[0]
        again = decide_safely(make_provider(cut), [cut_state])[0]
        if not (same_prompt and _same(full, again)):
            mismatches.append(
                f"{symbol}@{at:%Y-%m-%d %H:%M}: prompt {'same' if same_prompt else 'DIFFERS'}, "
                f"{full.action.value}->{again.action.value}"
            )
    # No sample proves nothing: an audit that checked nothing does not pass.
    passed = bool(samples) and not mismatches
    detail = f"{len(samples)} decisions re-made from data cut at t: " + (
        "none to re-make"
        if not samples
        else "all identical"
        if passed
        else f"{len(mismatches)} differ, e.g. {mismatches[:3]}"
    )
    return AuditResult(name, passed, detail, {"samples": len(samples), "mismatches": len(mismatches)})


def anonymized_audit(
    provider: DecisionProvider,
    states: Sequence[MarketState],
    *,
    max_disagreement: float = 0.3,
    decide: Decide = decide_safely,
) -> AuditResult:
    """Share of decisions whose action changes when the prompt is anonymized. Only the action matters
    here, so a provider that can score it (`LocalLLM.action_probabilities`: one forward pass per prompt,
    no generation) is scored; any other decides through `decide`."""
    scorer = getattr(provider, "action_probabilities", None)
    if callable(scorer):
        plain = [scored_action(p) for p in scorer(list(states))]
        hidden = [scored_action(p) for p in scorer([anonymized(s) for s in states])]
        how = "scored from one forward pass each"
    else:
        plain = [d.action.value for d in decide(provider, list(states))]
        hidden = [d.action.value for d in decide(provider, [anonymized(s) for s in states])]
        how = "decided"
    differ = float(np.mean([a != b for a, b in zip(plain, hidden, strict=True)])) if states else 0.0
    passed = differ <= max_disagreement
    return AuditResult(
        "anonymized",
        passed,
        f"{differ:.0%} of {len(states)} actions ({how}) change when symbol, dates and prices are hidden "
        f"(limit {max_disagreement:.0%})",
        {"disagreement": differ, "samples": len(states)},
    )


def lag_audit(sharpe_plain: float, sharpe_lagged: float, *, keep: float = 0.5) -> AuditResult:
    """An edge (positive Sharpe) must keep at least `keep` of its Sharpe when fills come a bar later."""
    passed = sharpe_plain <= 0 or sharpe_lagged >= keep * sharpe_plain
    return AuditResult(
        "one_bar_lag",
        passed,
        f"Sharpe {sharpe_plain:.2f} on time, {sharpe_lagged:.2f} one bar late"
        + ("" if passed else f": the edge vanishes under lag (< {keep:.0%} kept)"),
        {"sharpe": sharpe_plain, "sharpe_lagged": sharpe_lagged},
    )


@dataclass(frozen=True)
class LeakyPolicy:
    """Intentionally leaky (for the audits' own test): buys when the NEXT bar closes higher, which it
    can only know by reading the bars it was given beyond the decision time."""

    bars: pl.DataFrame
    name: str = "leaky"

    def decide(self, states: list[MarketState]) -> list[TradeDecision]:
        out = []
        for state in states:
            ahead = self.bars.filter(
                (pl.col("symbol") == state.symbol) & (pl.col("timestamp") >= state.at)
            ).sort("timestamp")
            up = ahead.height >= 1 and ahead["close"][0] > state.price
            action = "BUY" if up else "HOLD"
            out.append(
                TradeDecision(
                    action=action,
                    confidence=90 if up else 0,
                    position_size_pct=20 if up else 0,
                    symbol=state.symbol,
                    at=state.at,
                    provider=self.name,
                )
            )
        return out


@dataclass(frozen=True)
class ReplayDecisions:
    """A finished run's decisions handed back by (symbol, decision time), without asking the model
    again: the one-bar-lag audit shifts exactly these decisions. A time it never decided is a HOLD."""

    decisions: dict[tuple[str, datetime], TradeDecision]
    name: str = "replay"

    @classmethod
    def of(cls, decisions: Sequence[TradeDecision]) -> ReplayDecisions:
        return cls({(d.symbol, d.at): d for d in decisions if d.symbol and d.at})

    def decide(self, states: list[MarketState]) -> list[TradeDecision]:
        return [
            self.decisions.get((s.symbol, s.at))
            or TradeDecision(action="HOLD", confidence=0, position_size_pct=0, symbol=s.symbol, at=s.at)
            for s in states
        ]


def _spread(items: Sequence[Any], k: int) -> list[Any]:
    """`k` items spread evenly over `items` (all of them when there are fewer)."""
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / max(k - 1, 1))] for i in range(k)]


def run_llm_audits(
    make_provider: ProviderFactory,
    result: Any,
    run_lagged: Callable[[DecisionProvider], Any],
    bars_by_tf: dict[str, pl.DataFrame],
    *,
    decide: Decide = decide_safely,
    samples: int = 2,
    periods_per_year: float | None = None,
    lookback_days: int | None = None,
) -> list[AuditResult]:
    """The three audits of one policy run on one fold (`result`: a walk-forward `FoldResult` with its
    `run`): truncation on `samples` of its decisions, anonymized vs plain prompts on the same states,
    and the one-bar lag (`run_lagged(provider)` re-runs the fold with fills one bar late and returns
    its per-bar returns; it is given the run's own decisions to replay)."""
    from crypto_pipeline.backtest import metrics as m

    made = [d for d in (result.run.decisions if result.run else []) if d.symbol and d.at]
    points = _spread([(d.symbol, d.at) for d in made], samples)
    truncation = truncation_audit(
        make_provider, bars_by_tf, points, decide=decide, lookback_days=lookback_days
    )
    states = [_states(bars_by_tf, s, at, lookback_days) for s, at in points]
    anonymized = anonymized_audit(make_provider(bars_by_tf), states, decide=decide)
    ppy = periods_per_year or m.periods_per_year(result.returns.index)
    lagged = run_lagged(ReplayDecisions.of(made))
    lag = lag_audit(m.sharpe(result.returns.to_numpy(), ppy), m.sharpe(lagged.to_numpy(), ppy))
    return [truncation, anonymized, lag]

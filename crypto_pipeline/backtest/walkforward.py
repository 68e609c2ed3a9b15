"""Walk-forward evaluation: every policy on the same out-of-sample folds, one comparison table.

Signal baselines (buy_hold, ema_cross, rsi, lgbm) are vectorized; decision providers (RuleBased, any
LLM) run event by event through the risk engine every `decision_every`. Each fold starts from cash;
per-fold returns are stitched into one out-of-sample series per policy for the headline metrics, the
block-bootstrap intervals and the deflated Sharpe ratio across every policy tried."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from crypto_pipeline.backtest import metrics as m
from crypto_pipeline.backtest.audits import AuditResult, run_llm_audits
from crypto_pipeline.backtest.baselines import lgbm_long, signal_baseline
from crypto_pipeline.backtest.cache import DecisionCache
from crypto_pipeline.backtest.engine import (
    DEFAULT_FEE_BPS,
    INIT_CASH,
    PolicyRun,
    backtest_long_signals,
    decision_times,
    load_bars,
    run_policy,
    wide,
)
from crypto_pipeline.backtest.folds import Fold, walk_forward_folds
from crypto_pipeline.config import DEFAULT_SYMBOLS, SHARED_MARKET_DATA
from crypto_pipeline.errors import UserInputError
from crypto_pipeline.live.states import rolling_state_table
from crypto_pipeline.llm.behaviour import DecisionProfile
from crypto_pipeline.llm.provider import DecisionProvider
from crypto_pipeline.market.timeframes import Timeframe
from crypto_pipeline.risk import RiskConfig, RiskEngine
from crypto_pipeline.state.build import STATE_LOOKBACK_DAYS
from crypto_pipeline.timeutil import as_utc

log = logging.getLogger(__name__)
STATE_TIMEFRAMES = ("1h", "4h", "1d")  # 15m is recorded for 24 pairs only; 1h+ for all 136


@dataclass(frozen=True)
class WalkForwardConfig:
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    timeframe: str = "1h"
    start: str = "2024-01-01"
    end: str = "2024-09-07"
    n_folds: int = 3
    test_days: float = 14.0
    purge_hours: float = 24.0
    embargo_hours: float = 24.0
    decision_every_hours: float = 4.0
    fee_bps: float = DEFAULT_FEE_BPS
    slippage_bps: float | None = None  # None: the exchange's impact model (policy runs); 0 for signals
    init_cash: float = INIT_CASH
    fast: int = 9
    slow: int = 21
    data_dir: Path = SHARED_MARKET_DATA / "binance-spot-2024"
    risk: RiskConfig = field(default_factory=RiskConfig)
    # History each market state is built from (the live session's default window, `LiveConfig.lookback_days`);
    # loaded before `start` so that the first decision's indicators are as warm as live's.
    state_lookback_days: int = STATE_LOOKBACK_DAYS

    def folds(self, training_cutoff: str | datetime | None = None) -> list[Fold]:
        """The walk-forward folds of [start, end); with `training_cutoff`, only those whose test window
        starts after it plus purge and embargo (possibly none). Folds that do not fit the range (no
        training data before the first test window) are a UserInputError that says what would."""
        try:
            return walk_forward_folds(
                self.start,
                self.end,
                n_folds=self.n_folds,
                test_window=timedelta(days=self.test_days),
                purge=timedelta(hours=self.purge_hours),
                embargo=timedelta(hours=self.embargo_hours),
                training_cutoff=training_cutoff,
            )
        except UserInputError:
            raise
        except ValueError as error:
            raise UserInputError(
                f"{error}: {self.n_folds} fold(s) of {self.test_days:g} days do not fit "
                f"{as_utc(self.start):%Y-%m-%d %H:%M}..{as_utc(self.end):%Y-%m-%d %H:%M}; "
                "use fewer folds, shorter test days or an earlier start"
            ) from None


@dataclass(frozen=True)
class LLMWalkForward:
    """The default LLM walk-forward (`llm_backtests`, `make run`, the benchmark): LLM decisions are the
    slow part (tens of seconds each for SmolLM2 on two CPU cores), so the LLM decides on fewer symbols
    and less often than RuleBased, on the same folds. Sized to finish within 10 minutes from a cold
    decision cache on two cores (docs/backtest.md has the measurement)."""

    symbols: tuple[str, ...] = ("BTC/USDT",)
    # A decision every 48 h with 2 audit samples (39 calls) had spent 14.7 CPU-minutes and was not done
    # after 40 min under load ~13: over budget. Every 96 h with 1 sample: at most 21 calls.
    decision_every_hours: float = 96.0
    audit_samples: int = 1

    def config(self, base: WalkForwardConfig) -> WalkForwardConfig:
        return replace(base, symbols=self.symbols, decision_every_hours=self.decision_every_hours)

    def model_calls(self, base: WalkForwardConfig) -> int:
        """LLM calls of a cold run: the decisions of every fold, and per fold and audit sample one
        truncated re-decision plus the plain and anonymized prompts of the anonymized audit."""
        per_fold = len(self.symbols) * math.ceil(base.test_days * 24 / self.decision_every_hours)
        return base.n_folds * (per_fold + 3 * self.audit_samples)

    def describe(self, base: WalkForwardConfig) -> str:
        """What the LLM walk-forward ran and why it is that small (for the report)."""
        return (
            f"LLM walk-forward: {', '.join(self.symbols)}, a decision every {self.decision_every_hours:g} h, "
            f"{base.n_folds} folds of {base.test_days:g} days, {self.audit_samples} audit sample(s) per fold: "
            f"at most {self.model_calls(base)} LLM calls from a cold decision cache. Each SmolLM2 call takes "
            "tens of seconds on two CPU cores, so the interval and windows are chosen to finish within "
            "10 minutes cold (docs/backtest.md has the measurement); from the cache it takes seconds. "
            "The baselines and RuleBased run on every symbol in the table above; the gate compares the "
            "challenger only with rivals run on its own symbols, folds and decision times."
        )


LLM_WALK_FORWARD = LLMWalkForward()


@dataclass
class MarketData:
    """Bars of the execution timeframe, from `lookback_days` before the range on (the history a state
    needs: each state is built from the newest `lookback_days` of bars closed by its decision time, the
    window a live session holds), and `bars_by_tf` for the leakage audits (the same bars)."""

    bars: pl.DataFrame
    features: pl.DataFrame = field(default_factory=pl.DataFrame)  # unused since states come from windows
    bars_by_tf: dict[str, pl.DataFrame] = field(default_factory=dict)
    lookback_days: int = STATE_LOOKBACK_DAYS

    @classmethod
    def load(cls, config: WalkForwardConfig, *, history_days: float = 0.0) -> MarketData:
        """The bars of `config`'s range, from `state_lookback_days` (or `history_days`, if longer: e.g. a
        training span) before its start on."""
        first = as_utc(config.start)
        warm_start = first - timedelta(days=max(config.state_lookback_days, history_days))
        bars = load_bars(config.symbols, config.timeframe, warm_start, config.end, config.data_dir)
        if bars.filter(pl.col("timestamp") >= first).is_empty():
            # Bars only in the lookback: the error (folder, symbols, the range it holds) for the range itself.
            load_bars(config.symbols, config.timeframe, first, config.end, config.data_dir)
        return cls(bars, bars_by_tf={config.timeframe: bars}, lookback_days=config.state_lookback_days)

    def states(self, config: WalkForwardConfig, times: Sequence[datetime]) -> pl.DataFrame:
        """`market_state_table` rows for every symbol at `times`, each from the newest `lookback_days` of
        bars closed by then (`live.states.rolling_state_table`: the live session's own window and code)."""
        none = pl.DataFrame(schema={"symbol": pl.String, "at": pl.Datetime("us", "UTC"), "price": pl.Float64})
        if not times:
            return none
        base = Timeframe.parse(config.timeframe)
        oldest = min(times) - timedelta(days=self.lookback_days) - base.duration
        bars = self.bars.filter((pl.col("timestamp") >= oldest) & (pl.col("timestamp") < max(times)))
        table = rolling_state_table(bars, base, config.symbols, list(times), self.lookback_days)
        return table if table.height else none


@dataclass
class FoldResult:
    policy: str
    fold: str
    metrics: dict[str, float]
    returns: pd.Series
    llm: dict[str, float] = field(default_factory=dict)
    run: PolicyRun | None = None
    audits: list[AuditResult] = field(default_factory=list)


def _window(frame: pd.DataFrame, fold: Fold) -> pd.DataFrame:
    return frame.loc[(frame.index >= fold.test_start) & (frame.index < fold.test_end)]


def run_signal_fold(name: str, data: MarketData, fold: Fold, config: WalkForwardConfig) -> FoldResult:
    """One signal baseline on one fold's test window (signals from full causal history)."""
    open_, close = wide(data.bars, "open"), wide(data.bars, "close")
    if name == "lgbm":
        history = data.bars.filter(pl.col("timestamp") < fold.test_end)
        long = lgbm_long(history, fold, config.timeframe, fee_bps=config.fee_bps).reindex(
            index=_window(close, fold).index, columns=close.columns, fill_value=False
        )
    else:
        long = _window(signal_baseline(name, close.ffill(), fast=config.fast, slow=config.slow), fold)
    pf = backtest_long_signals(
        _window(open_, fold),
        _window(close, fold),
        long.astype(bool),
        fee_bps=config.fee_bps,
        slippage_bps=config.slippage_bps or 0.0,
        init_cash=config.init_cash / len(close.columns),  # one account per symbol; together init_cash
        group_by=True,
    )
    equity = pf.value()
    return FoldResult(name, fold.key, m.summarize(pf, equity=equity), equity.pct_change().fillna(0.0))


def run_provider_fold(
    name: str,
    provider: DecisionProvider,
    data: MarketData,
    fold: Fold,
    config: WalkForwardConfig,
    cache: DecisionCache | None = None,
    *,
    lag_bars: int = 0,
) -> FoldResult:
    """A decision provider on one fold, through the risk engine (fresh engine per fold). `lag_bars`
    delays every fill (the one-bar-lag audit)."""
    warm = fold.test_start - timedelta(days=2)
    bars = data.bars.filter((pl.col("timestamp") >= warm) & (pl.col("timestamp") < fold.test_end))
    index = pd.DatetimeIndex(sorted(bars["timestamp"].unique().to_list()))
    times = decision_times(
        index, timedelta(hours=config.decision_every_hours), fold.test_start, fold.test_end
    )
    points = pl.DataFrame(
        [(s, t) for t in times for s in config.symbols],
        schema={"symbol": pl.String, "at": pl.Datetime("us", "UTC")},
        orient="row",
    )
    states = data.states(config, times).join(points, on=["symbol", "at"], how="semi")
    states = states.filter(pl.col("price").is_not_null())
    cache = cache or DecisionCache()
    hits, misses = cache.hits, cache.misses
    run = run_policy(
        provider,
        bars,
        states,
        risk=RiskEngine(config.risk),
        fee_bps=config.fee_bps,
        slippage_bps=config.slippage_bps,
        init_cash=config.init_cash,
        decide=cache.decide,
        lag_bars=lag_bars,
        run_id=f"backtest-{name}-{fold.key}",
    )
    equity = run.equity.loc[run.equity.index >= fold.test_start]
    decisions = run.decisions
    fresh = cache.misses - misses
    profile = DecisionProfile.of(decisions)  # what the decisions look like (llm/behaviour.py)
    llm = {
        "decisions": len(decisions),
        "invalid_rate": profile.invalid_rate,
        **{f"{a.lower()}_share": share for a, share in profile.shares.items()},
        "mean_confidence": profile.mean_confidence,
        "distinct_reasoning_share": profile.distinct_reasoning_share,
        "top_reasoning_share": profile.top_reasoning_share,
        "cache_hits": cache.hits - hits,
        "cache_misses": fresh,
        "decisions_per_min": fresh / (run.wall_s / 60) if fresh and run.wall_s > 0 else 0.0,
        "tokens_per_decision": float(
            np.mean([(d.prompt_tokens or 0) + (d.completion_tokens or 0) for d in decisions])
        )
        if decisions
        else 0.0,
        "cost_per_decision": float(np.mean([d.cost_usd or 0.0 for d in decisions])) if decisions else 0.0,
        "approved": sum(o.approved for o in run.outcomes),
        "wall_s": run.wall_s,
    }
    return FoldResult(
        name, fold.key, m.summarize(run.portfolio, equity=equity), equity.pct_change().fillna(0.0), llm, run
    )


@dataclass
class WalkForwardReport:
    folds: list[Fold]
    results: list[FoldResult]
    wall_s: float = 0.0

    def policies(self) -> list[str]:
        return list(dict.fromkeys(r.policy for r in self.results))

    def audits(self, policy: str) -> list[AuditResult]:
        """Every fold's leakage audits of `policy` (empty when it was not audited)."""
        return [a for r in self.results if r.policy == policy for a in r.audits]

    def stitched(self, policy: str) -> pd.Series:
        parts = [r.returns for r in self.results if r.policy == policy]
        return pd.concat(parts).sort_index() if parts else pd.Series(dtype=float)

    def per_fold(self) -> pl.DataFrame:
        """One row per (policy, fold): the metrics and, for providers (rules and LLMs alike), the decision
        figures as `decision_*` columns (stored fold results keep their older `llm_*` names)."""
        rows = [
            {
                "policy": r.policy,
                "fold": r.fold,
                **r.metrics,
                **{f"decision_{k}": v for k, v in r.llm.items()},
            }
            for r in self.results
        ]
        return pl.DataFrame(rows, infer_schema_length=None)

    def table(self, reference: str = "buy_hold", reps: int = 300) -> pl.DataFrame:
        """One row per policy over the stitched out-of-sample returns, with Sharpe's bootstrap interval,
        the interval of its difference to `reference`, and the deflated Sharpe across all policies."""
        series = {p: self.stitched(p) for p in self.policies()}
        trial = [m.per_period_sharpe(s.to_numpy()) for s in series.values()]
        rows = []
        for policy, returns in series.items():
            r = returns.to_numpy()
            ppy = m.periods_per_year(returns.index)
            equity = np.cumprod(1 + r)
            lo, hi = m.sharpe_ci(r, ppy, reps=reps)
            row = {
                "policy": policy,
                "total_return": float(equity[-1] - 1) if r.size else 0.0,
                "sharpe": m.sharpe(r, ppy),
                "sharpe_lo": lo,
                "sharpe_hi": hi,
                "sortino": m.sortino(r, ppy),
                "max_drawdown": m.max_drawdown(np.concatenate([[1.0], equity])),
                "trades": int(sum(x.metrics["trades"] for x in self.results if x.policy == policy)),
                "fees_paid": float(sum(x.metrics["fees_paid"] for x in self.results if x.policy == policy)),
                "turnover": float(
                    np.mean([x.metrics["turnover"] for x in self.results if x.policy == policy])
                ),
                "deflated_sharpe": m.deflated_sharpe(r, trial),
            }
            if reference in series and policy != reference:
                d_lo, d_hi = m.sharpe_difference_ci(r, series[reference].to_numpy(), ppy, reps=reps)
                row.update(sharpe_diff_vs_ref_lo=d_lo, sharpe_diff_vs_ref_hi=d_hi)
            rows.append(row)
        return pl.DataFrame(rows, infer_schema_length=None)


def walk_forward(
    config: WalkForwardConfig,
    *,
    signal_policies: Sequence[str] = ("buy_hold", "ema_cross", "rsi", "lgbm"),
    providers: Mapping[str, DecisionProvider] | None = None,
    cache: DecisionCache | None = None,
    folds: Sequence[Fold] | None = None,
    data: MarketData | None = None,
    audited: Collection[str] = (),
    audit_samples: int = 2,
) -> WalkForwardReport:
    """Every policy on every fold. Providers named in `audited` (the LLMs) also get the three leakage
    audits on each fold (`audits.run_llm_audits`, `audit_samples` decisions re-made per fold)."""
    started = time.perf_counter()
    data = data or MarketData.load(config)
    folds = list(folds or config.folds())
    results: list[FoldResult] = []
    held = data.bars["timestamp"]
    empty = [f for f in folds if held.filter((held >= f.test_start) & (held < f.test_end)).is_empty()]
    for fold in empty:  # a test window past the data (an --end after it): nothing to trade or judge
        log.warning(
            "%s: no %s bars in its test window %s..%s: left out",
            fold.key,
            config.timeframe,
            fold.test_start,
            fold.test_end,
        )
    folds = [f for f in folds if f not in empty]
    for fold in folds:
        for name in signal_policies:
            results.append(run_signal_fold(name, data, fold, config))
        for name, provider in (providers or {}).items():
            result = run_provider_fold(name, provider, data, fold, config, cache)
            if name in audited:
                result.audits = run_llm_audits(
                    lambda _bars, p=provider: p,
                    result,
                    lambda lagged, n=name, f=fold: (
                        run_provider_fold(n, lagged, data, f, config, lag_bars=1).returns
                    ),
                    data.bars_by_tf,
                    decide=(cache or DecisionCache()).decide,
                    samples=audit_samples,
                    lookback_days=data.lookback_days,
                )
            results.append(result)
    if cache is not None:
        cache.save()
    return WalkForwardReport(folds, results, time.perf_counter() - started)


# --- per-fold results at rest (Dagster partitions write them; the report reads them all) ----------
def save_fold_results(results: Sequence[FoldResult], directory: Path) -> Path:
    """One Parquet pair per (fold, policy set): metrics and the out-of-sample returns."""
    directory.mkdir(parents=True, exist_ok=True)
    for r in results:
        stem = f"{r.fold}__{r.policy.replace(':', '_').replace('/', '_')}"
        pl.DataFrame(
            [{"policy": r.policy, "fold": r.fold, **r.metrics, **{f"llm_{k}": v for k, v in r.llm.items()}}]
        ).write_parquet(directory / f"{stem}.metrics.parquet")
        pl.DataFrame({"timestamp": r.returns.index.to_list(), "ret": r.returns.to_numpy()}).write_parquet(
            directory / f"{stem}.returns.parquet"
        )
        audits = [
            {"name": a.name, "passed": a.passed, "detail": a.detail, "figures": a.figures} for a in r.audits
        ]
        (directory / f"{stem}.audits.json").write_text(json.dumps(audits))
    return directory


def load_fold_results(directory: Path, folds: Sequence[Fold]) -> WalkForwardReport:
    results = []
    for path in sorted(directory.glob("*.metrics.parquet")):
        row = pl.read_parquet(path).row(0, named=True)
        returns = pl.read_parquet(path.with_name(path.name.replace(".metrics.", ".returns.")))
        series = pd.Series(returns["ret"].to_numpy(), index=pd.DatetimeIndex(returns["timestamp"].to_list()))
        llm = {k[4:]: v for k, v in row.items() if k.startswith("llm_")}
        metrics = {k: v for k, v in row.items() if k not in ("policy", "fold") and not k.startswith("llm_")}
        audit_path = path.with_name(path.name.replace(".metrics.parquet", ".audits.json"))
        audits = [AuditResult(**a) for a in json.loads(audit_path.read_text())] if audit_path.exists() else []
        results.append(FoldResult(row["policy"], row["fold"], metrics, series, llm, audits=audits))
    keys = {r.fold for r in results}
    return WalkForwardReport([f for f in folds if f.key in keys], results)

"""Walk-forward evaluation: every policy on the same out-of-sample folds, one comparison table.

Signal baselines (buy_hold, ema_cross, rsi, lgbm) are vectorized; decision providers (RuleBased, any
LLM) run event by event through the risk engine every `decision_every`. Each fold starts from cash, so
the folds of a provider run concurrently, each model call carrying every fold's states (`batching`);
per-fold returns are stitched into one out-of-sample series per policy for the headline metrics, the
block-bootstrap intervals and the deflated Sharpe ratio across every policy tried."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from crypto_pipeline.backtest import metrics as m
from crypto_pipeline.backtest.audits import AuditResult, run_llm_audits
from crypto_pipeline.backtest.baselines import lgbm_long, signal_baseline
from crypto_pipeline.backtest.batching import FoldBatcher
from crypto_pipeline.backtest.cache import DecisionCache, Tally
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
    """The default LLM walk-forward (`llm_backtests`, `make run`, the benchmark): every symbol, a decision
    every 4 h, on every fold after the model's training cutoff (3 of 14 days by default), in the first
    `window_days` of each fold's test window. The folds decide concurrently, so each SmolLM2 call carries
    folds x symbols states (9), where one fold alone could batch only its 3 symbols.

    Sized for 10 minutes cold on two CPU cores: 3 folds x 5 days x 6 decision times x 3 symbols = 270
    decisions (30 model calls of 9 states) and 3 model calls of 3 states per audit sample. Measured
    (docs/backtest.md, "Measured here"; `make run`'s stage with a registered adapter, float32, the
    gate's rivals included) on two quiet cores: 408 s cold (560 CPU-s; the LLM's folds 342 s, about 47
    decisions/min), 76 s from the decision cache. The full 14 days (756 decisions) would not fit. The gate's rivals run on the same shortened folds, so
    the gate still compares like for like."""

    symbols: tuple[str, ...] = ()  # empty: every symbol of the walk-forward
    decision_every_hours: float = 4.0
    # The first days of each fold's test window the LLM decides in (None or 0: the whole window).
    window_days: float | None = 5.0
    audit_samples: int = 1

    def config(self, base: WalkForwardConfig) -> WalkForwardConfig:
        return replace(
            base, symbols=self.symbols or base.symbols, decision_every_hours=self.decision_every_hours
        )

    def folds(self, folds: Sequence[Fold]) -> list[Fold]:
        """`folds` with their test windows cut to the first `window_days` (same keys)."""
        if not self.window_days:
            return list(folds)
        window = timedelta(days=self.window_days)
        return [replace(f, test_end=min(f.test_end, f.test_start + window)) for f in folds]

    def decision_times(self, base: WalkForwardConfig) -> int:
        """Decision times per fold (at most: a time without bars is left out)."""
        days = min(base.test_days, self.window_days or base.test_days)
        return math.ceil(days * 24 / self.decision_every_hours)

    def decisions(self, base: WalkForwardConfig) -> int:
        """LLM decisions of a cold run on every fold (at most)."""
        return base.n_folds * len(self.symbols or base.symbols) * self.decision_times(base)

    def model_calls(self, base: WalkForwardConfig) -> int:
        """Batched LLM calls of a cold run: one per decision time (every fold's symbols together), and per
        audit sample one truncated re-decision plus the plain and anonymized prompts of the anonymized
        audit (every fold's together)."""
        return self.decision_times(base) + 3 * self.audit_samples

    def describe(self, base: WalkForwardConfig) -> str:
        """What the LLM walk-forward ran and why it is that size (for the report)."""
        symbols = self.symbols or base.symbols
        window = (
            f"the first {self.window_days:g} of each fold's {base.test_days:g} days"
            if self.window_days and self.window_days < base.test_days
            else f"all {base.test_days:g} days of each fold"
        )
        return (
            f"LLM walk-forward: {', '.join(symbols)}, a decision every {self.decision_every_hours:g} h in "
            f"{window}, {base.n_folds} folds decided concurrently, {self.audit_samples} audit sample(s) per "
            f"fold: at most {self.decisions(base)} decisions in {self.model_calls(base)} batched model calls "
            f"from a cold decision cache (each carrying up to {base.n_folds * len(symbols)} states). Sized "
            "for 10 minutes cold on two CPU cores (measured: 343-408 s cold with the gate's rivals, 76 s from "
            "the decision cache; docs/backtest.md). The baselines and RuleBased run on every fold's whole window in the table above; "
            "the gate compares the challenger only with rivals run on its own symbols, windows and "
            "decision times."
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
    delays every fill (the one-bar-lag audit). Other folds may use `cache` at the same time (see
    `run_provider_folds`): the fold's cache figures are its own."""
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
    tally = Tally()
    run = run_policy(
        provider,
        bars,
        states,
        risk=RiskEngine(config.risk),
        fee_bps=config.fee_bps,
        slippage_bps=config.slippage_bps,
        init_cash=config.init_cash,
        decide=lambda provider_, states_: cache.decide(provider_, states_, tally=tally),
        lag_bars=lag_bars,
        run_id=f"backtest-{name}-{fold.key}",
    )
    equity = run.equity.loc[run.equity.index >= fold.test_start]
    decisions = run.decisions
    fresh = tally.misses
    profile = DecisionProfile.of(decisions)  # what the decisions look like (llm/behaviour.py)
    llm = {
        "decisions": len(decisions),
        "invalid_rate": profile.invalid_rate,
        **{f"{a.lower()}_share": share for a, share in profile.shares.items()},
        "mean_confidence": profile.mean_confidence,
        "distinct_reasoning_share": profile.distinct_reasoning_share,
        "top_reasoning_share": profile.top_reasoning_share,
        "cache_hits": tally.hits,
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


def run_provider_folds(
    name: str,
    provider: DecisionProvider,
    data: MarketData,
    folds: Sequence[Fold],
    config: WalkForwardConfig,
    cache: DecisionCache | None = None,
    *,
    audited: bool = False,
    audit_samples: int = 2,
    concurrent: bool = True,
) -> list[FoldResult]:
    """`provider` on every fold (`run_provider_fold`), with the three leakage audits when `audited`.

    `concurrent` (with more than one fold): the folds run in threads, each through its own
    `BatchedProvider` of one `FoldBatcher`, so every model call carries the states of every fold at that
    step (folds x symbols) instead of one fold's symbols; the audits' model calls are gathered the same
    way. Each fold keeps its own account, risk engine and journal, so the results are those of the folds
    run one after another (`concurrent=False`) for any provider whose answer for a state does not depend
    on the rest of its batch."""
    cache = cache or DecisionCache()

    def one(fold: Fold, member: DecisionProvider) -> FoldResult:
        result = run_provider_fold(name, member, data, fold, config, cache)
        if audited:
            result.audits = run_llm_audits(
                lambda _bars: member,
                result,
                lambda lagged: run_provider_fold(name, lagged, data, fold, config, lag_bars=1).returns,
                data.bars_by_tf,
                decide=cache.decide,
                samples=audit_samples,
                lookback_days=data.lookback_days,
            )
        return result

    if not concurrent or len(folds) < 2:
        return [one(fold, provider) for fold in folds]
    batcher = FoldBatcher(provider, len(folds))

    def member_run(index: int, fold: Fold) -> FoldResult:
        member = batcher.member(index)
        try:
            return one(fold, member)
        finally:
            member.close()  # the other folds stop waiting for this one, also when it failed

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(folds), thread_name_prefix=f"fold-{name}") as pool:
        futures = [pool.submit(member_run, i, fold) for i, fold in enumerate(folds)]
        results = [f.result() for f in futures]
    if batcher.calls:
        log.info(
            "%s: %d folds in %.0f s, %d provider calls of %.1f states on average (at most %d)",
            name,
            len(folds),
            time.perf_counter() - started,
            batcher.calls,
            batcher.states / batcher.calls,
            batcher.largest,
        )
    return results


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
    concurrent: bool = True,
) -> WalkForwardReport:
    """Every policy on every fold. Providers named in `audited` (the LLMs) also get the three leakage
    audits on each fold (`audits.run_llm_audits`, `audit_samples` decisions re-made per fold). Each
    provider decides on its folds concurrently, one model call for every fold's states
    (`run_provider_folds`; `concurrent=False` runs them one after another)."""
    started = time.perf_counter()
    data = data or MarketData.load(config)
    folds = list(folds or config.folds())
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
    by_provider = {
        name: run_provider_folds(
            name,
            provider,
            data,
            folds,
            config,
            cache,
            audited=name in audited,
            audit_samples=audit_samples,
            concurrent=concurrent,
        )
        for name, provider in (providers or {}).items()
    }
    results: list[FoldResult] = []
    for i, fold in enumerate(folds):
        results += [run_signal_fold(name, data, fold, config) for name in signal_policies]
        results += [runs[i] for runs in by_provider.values()]
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

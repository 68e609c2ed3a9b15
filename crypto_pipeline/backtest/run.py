"""One backtest of one policy over one range: what `crypto-pipeline backtest` runs.

Signal policies (ema_cross, rsi, buy_hold) run over the whole range at once, one account per symbol
(the cash split evenly), without the risk engine, so other engines can reproduce them. `lgbm` needs
training data: it runs walk-forward inside the range. `rules` and `llm[:ALIAS_OR_VERSION]` run through
the risk engine and the decision cache (the warehouse's `decision_cache` table); their providers come
from `crypto_pipeline.registry.make_provider`, as live sessions' do."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from crypto_pipeline.backtest import metrics as m
from crypto_pipeline.backtest.baselines import signal_baseline
from crypto_pipeline.backtest.cache import DecisionCache
from crypto_pipeline.backtest.engine import backtest_long_signals, load_bars, wide
from crypto_pipeline.backtest.folds import Fold
from crypto_pipeline.backtest.walkforward import (
    MarketData,
    WalkForwardConfig,
    WalkForwardReport,
    walk_forward,
)
from crypto_pipeline.errors import UserInputError
from crypto_pipeline.registry import make_provider
from crypto_pipeline.timeutil import as_utc

POLICIES = ("ema_cross", "rsi", "buy_hold", "rules", "lgbm", "llm")


def llm_policy_name(version: str) -> str:
    """The policy name of a registered version in reports and fold results (never an alias: an alias
    moves, a version does not)."""
    return f"llm:{version}"


def check_policy(policy: str) -> str:
    base = policy.split(":", 1)[0]
    if base not in POLICIES or (":" in policy and base != "llm"):
        raise UserInputError(f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)} or llm:ALIAS")
    return base


def backtest(
    policy: str,
    config: WalkForwardConfig,
    *,
    out_dir: Path | None = None,
    warehouse: Any = None,
) -> tuple[dict[str, Any], WalkForwardReport | None]:
    """Run one policy; returns the JSON-ready summary (final_equity, trades, metrics) and the report."""
    base = check_policy(policy)
    first, last = as_utc(config.start), as_utc(config.end)
    if first >= last:
        raise UserInputError(f"start {first:%Y-%m-%d %H:%M} must be before end {last:%Y-%m-%d %H:%M}")
    if base in ("ema_cross", "rsi", "buy_hold"):
        bars = load_bars(config.symbols, config.timeframe, first, last, config.data_dir)
        open_, close = wide(bars, "open"), wide(bars, "close")
        long = signal_baseline(base, close.ffill(), fast=config.fast, slow=config.slow)
        pf = backtest_long_signals(
            open_,
            close,
            long,
            fee_bps=config.fee_bps,
            slippage_bps=config.slippage_bps or 0.0,
            init_cash=config.init_cash / len(close.columns),
            group_by=True,
        )
        summary = m.summarize(pf)
        return {"policy": policy, **summary}, None
    if base == "lgbm":
        report = walk_forward(config, signal_policies=("lgbm",))
    else:
        data = MarketData.load(config)  # unknown symbols, an empty range: an error before a model loads
        provider = make_provider(policy).provider
        whole = Fold(0, first, first, first, last)
        cache = DecisionCache(warehouse)
        report = walk_forward(
            config, signal_policies=(), providers={policy: provider}, cache=cache, folds=[whole], data=data
        )
    row = report.table().row(0, named=True)
    per_fold = report.per_fold()
    summary = {
        "policy": policy,
        "final_equity": config.init_cash * (1 + row["total_return"]),
        "trades": row["trades"],
        **{k: v for k, v in row.items() if k not in ("policy", "trades")},
    }
    llm_cols = [c for c in per_fold.columns if c.startswith("llm_")]
    if llm_cols:
        summary.update(
            {
                c: per_fold[c].sum()
                if c.endswith(("decisions", "hits", "misses", "approved"))
                else per_fold[c].mean()
                for c in llm_cols
            }
        )
    if out_dir is not None:
        from crypto_pipeline.backtest.report import write_report

        paths = write_report(report, out_dir, extra=f"{policy} {config.start} to {config.end}")
        summary["report"] = str(paths["html"])
    return summary, report


def config_from_options(**options: Any) -> WalkForwardConfig:
    return replace(WalkForwardConfig(), **{k: v for k, v in options.items() if v is not None})


def parse_day(text: str) -> datetime:
    return as_utc(text)

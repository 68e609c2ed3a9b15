"""One backtest of one policy over one span: what `crypto-pipeline backtest` runs.

Every policy is measured on the same test span [start, end) and reported in one format (`summary_of`).
Signal policies (ema_cross, rsi, buy_hold) trade one account per symbol (the cash split evenly), without
the risk engine, so other engines can reproduce them; their indicators are warm from the history loaded
before the span. `lgbm` trains on an explicit span before it (`--train-days`). `rules` and
`llm[:REF|:base]` run through the risk engine and the decision cache (the warehouse's `decision_cache`
table); their providers come from `crypto_pipeline.registry.make_provider`, as live sessions' do."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl

from crypto_pipeline.backtest.cache import DecisionCache
from crypto_pipeline.backtest.engine import decision_times
from crypto_pipeline.backtest.folds import Fold
from crypto_pipeline.backtest.inputs import POLICIES, check_policy  # noqa: F401 - their old home
from crypto_pipeline.backtest.walkforward import (
    MarketData,
    WalkForwardConfig,
    WalkForwardReport,
    walk_forward,
)
from crypto_pipeline.errors import UserInputError
from crypto_pipeline.llm.behaviour import DecisionProfile
from crypto_pipeline.llm.provider import DecisionProvider
from crypto_pipeline.registry import CHAMPION, make_provider
from crypto_pipeline.timeutil import as_utc


def llm_policy_name(version: str) -> str:
    """The policy name of a registered version in reports and fold results (never an alias: an alias
    moves, a version does not)."""
    return f"llm:{version}"


SIGNALS = ("ema_cross", "rsi", "buy_hold")
#: LightGBM's default training span: the days before the test span's start (less purge and embargo).
LGBM_TRAIN_DAYS = 120.0


@dataclass(frozen=True)
class PolicyChoice:
    """What a policy name means for a run: its label in reports (a registered version by number, never
    by alias) and, for rules and LLMs, the provider and how it was chosen."""

    label: str
    provider: DecisionProvider | None = None
    note: str = ""


def choose_policy(policy: str, settings: Any = None) -> PolicyChoice:
    """`llm` is the registered `crypto-policy@champion`, else the newest `@challenger` (the note says
    which); `llm:REF` a version or alias; `llm:base` the embedded base model; `rules` the rule-based
    provider. A missing version is a UserInputError before any model loads."""
    base = check_policy(policy)
    if base in (*SIGNALS, "lgbm"):
        return PolicyChoice(policy)
    if policy == "rules":
        return PolicyChoice("rules", make_provider("rules", settings).provider, "rule-based provider")
    if policy == "llm:base":
        choice = make_provider("llm", settings)
        return PolicyChoice("llm:base", choice.provider, choice.note)
    if policy == "llm":
        try:
            choice = make_provider("llm", settings, ref=CHAMPION, fallback=True)
        except UserInputError as error:
            raise UserInputError(
                f"--policy llm: {error}; --policy llm:base is the embedded base model"
            ) from None
    else:
        choice = make_provider(policy, settings)
    return PolicyChoice(llm_policy_name(str(choice.version)), choice.provider, choice.note.strip())


def backtest(
    policy: str,
    config: WalkForwardConfig,
    *,
    out_dir: Path | None = None,
    warehouse: Any = None,
    max_decisions: int | None = None,
    train_days: float = LGBM_TRAIN_DAYS,
    settings: Any = None,
) -> tuple[dict[str, Any], WalkForwardReport | None]:
    """Run one policy on the test span [config.start, config.end): every policy on that same span, in
    one report format (`summary_of`). Returns the JSON-ready summary and the report.

    `lgbm` trains on the `train_days` before the span (less purge and embargo; an explicit fold, printed
    in the summary). `rules`/`llm*` decide through the risk engine and the decision cache (written as
    decisions are made); `max_decisions` ends their span before the decision that would exceed it."""
    base = check_policy(policy)
    first, last = as_utc(config.start), as_utc(config.end)
    if first >= last:
        raise UserInputError(f"start {first:%Y-%m-%d %H:%M} must be before end {last:%Y-%m-%d %H:%M}")
    if max_decisions is not None and max_decisions < 1:
        raise UserInputError(f"--max-decisions must be at least 1, got {max_decisions}")
    gap = timedelta(hours=config.purge_hours + config.embargo_hours)
    notes: dict[str, Any] = {}
    if base == "lgbm":
        if train_days <= 0:
            raise UserInputError(f"--train-days must be positive, got {train_days:g}")
        fold = Fold(0, first - gap - timedelta(days=train_days), first - gap, first, last)
        data = MarketData.load(config, history_days=train_days + gap / timedelta(days=1))
        training = data.bars.filter(
            (pl.col("timestamp") >= fold.train_start) & (pl.col("timestamp") < fold.train_end)
        )
        if training.height == 0:
            raise UserInputError(
                f"lgbm: no {config.timeframe} bars to train on in [{fold.train_start:%Y-%m-%d %H:%M}, "
                f"{fold.train_end:%Y-%m-%d %H:%M}) (the {train_days:g} days before the test span, less purge "
                f"and embargo) in {config.data_dir}: use a later --start or fewer --train-days"
            )
        held_from = training["timestamp"].min()
        notes.update(
            train_start=max(fold.train_start, held_from).isoformat(),  # the folder may start later
            train_end=fold.train_end.isoformat(),
        )
    else:
        data = MarketData.load(config)  # unknown symbols, an empty range: an error before a model loads
        fold = Fold(0, first, first, first, last)
    chosen = choose_policy(policy, settings)
    cache = None
    if chosen.provider is not None:
        notes["model"] = chosen.note
        cache = DecisionCache(warehouse)
        index = pd.DatetimeIndex(sorted(data.bars["timestamp"].unique().to_list()))
        times = decision_times(index, timedelta(hours=config.decision_every_hours), first, last)
        per_time = len(config.symbols)
        if max_decisions is not None and len(times) * per_time > max_decisions:
            kept = max(1, max_decisions // per_time)
            if kept < len(times):
                fold = Fold(0, first, first, first, times[kept])
                notes["capped"] = (
                    f"--max-decisions {max_decisions}: {kept} decision time(s) x {per_time} symbol(s); the "
                    f"span ends at {times[kept]:%Y-%m-%d %H:%M} instead of {last:%Y-%m-%d %H:%M}"
                )
    report = walk_forward(
        config,
        signal_policies=() if chosen.provider is not None else (base,),
        providers={chosen.label: chosen.provider} if chosen.provider is not None else None,
        cache=cache,
        folds=[fold],
        data=data,
    )
    summary = summary_of(report, chosen.label, config, fold, notes)
    if out_dir is not None:
        from crypto_pipeline.backtest.report import write_report

        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        last_day = fold.test_end - timedelta(microseconds=1)  # the span's last day, as the user wrote it
        stem = f"{chosen.label.replace(':', '-')}_{fold.test_start:%Y%m%d}-{last_day:%Y%m%d}_{stamp}"
        extra = ", ".join(f"{k} {v}" for k, v in summary.items() if k in _DESCRIBE)
        paths = write_report(report, out_dir, extra=extra, stem=stem)
        summary["report"] = str(paths["html"])
    return summary, report


_DESCRIBE = ("policy", "model", "data_dir", "symbols", "timeframe", "test_start", "test_end", "train_start",
             "train_end", "capped")  # fmt: skip
# The per-run figures of a provider (rules, LLM): decisions, what they were, and what they cost.
DECISION_FIGURES = (
    "decisions", "buy_share", "sell_share", "hold_share", "mean_confidence", "distinct_reasoning_share",
    "top_reasoning_share", "invalid_rate", "approved", "cache_hits", "cache_misses", "decisions_per_min",
    "tokens_per_decision", "cost_per_decision", "wall_s",
)  # fmt: skip


def summary_of(
    report: WalkForwardReport, label: str, config: WalkForwardConfig, fold: Fold, notes: dict[str, Any]
) -> dict[str, Any]:
    """The one report format of a backtest run, whatever the policy: what ran on which data and span,
    the portfolio metrics (`metrics.summarize`), the Sharpe interval, its difference to buy-and-hold where
    run, the deflated Sharpe, and for rules and LLMs the decision figures (`DECISION_FIGURES`)."""
    [result] = [r for r in report.results if r.policy == label]
    row = report.table().row(0, named=True)
    summary: dict[str, Any] = {
        "policy": label,
        "data_dir": str(config.data_dir),
        "symbols": ",".join(config.symbols),
        "timeframe": config.timeframe,
        "test_start": fold.test_start.isoformat(),
        "test_end": fold.test_end.isoformat(),
        **notes,
        **result.metrics,
        **{k: v for k, v in row.items() if k != "policy"},
    }
    summary["final_equity"] = config.init_cash * (1 + row["total_return"])
    summary["trades"] = int(row["trades"])
    for key in DECISION_FIGURES:
        if key in result.llm:
            summary[key] = result.llm[key]
    if result.run is not None:
        # One action nearly always, or one sentence for everything: said (empty with too few to tell).
        summary["degenerate"] = DecisionProfile.of(result.run.decisions).degenerate_reasons()
        killed = [
            (d.at, o.reason)
            for d, o in zip(result.run.decisions, result.run.outcomes, strict=True)
            if o.reason and o.reason.startswith("kill switch")
        ]
        if killed:
            first, reason = killed[0]
            summary["kill_switch"] = (
                f"the drawdown kill switch fired by {first:%Y-%m-%d %H:%M} ({reason.split(';')[0]}): positions "
                f"were closed and the {len(killed)} later decision(s) rejected: the switch waits for a person "
                "(RiskEngine.reset_kill_switch), and nobody resets it in a backtest, so the run is over for this "
                "policy from then on"
            )
    return summary


def config_from_options(**options: Any) -> WalkForwardConfig:
    return replace(WalkForwardConfig(), **{k: v for k, v in options.items() if v is not None})


def parse_day(text: str) -> datetime:
    return as_utc(text)

"""What one live session did, read back from its journal (never from the session's own counters): decisions
and their valid rate, risk approvals, orders, fills, P&L against holding the same symbols, and the
model's decision latency. `make run` prints it; it reads only the rows tagged with the session's run id."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import polars as pl

from crypto_pipeline.llm.behaviour import DecisionProfile
from crypto_pipeline.warehouse import Warehouse


@dataclass(frozen=True)
class JournalSummary:
    run_id: str
    decisions: int
    valid: int
    decision_times: int
    actions: dict[str, int]
    approved: int
    orders: int  # distinct client order ids the session submitted
    fills: int
    equity_start: float | None
    equity_end: float | None
    buy_and_hold_return: float | None  # equal weight over the symbols decided on, first to last decision
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    first: datetime | None
    last: datetime | None
    # Approved orders by the model version whose decision they answer ("the model behind each order").
    orders_by_model: dict[str, int] = field(default_factory=dict)

    @property
    def valid_rate(self) -> float | None:
        return self.valid / self.decisions if self.decisions else None

    @property
    def session_return(self) -> float | None:
        if not self.equity_start or self.equity_end is None:
            return None
        return self.equity_end / self.equity_start - 1

    def lines(self) -> list[str]:
        """The summary as terminal lines (what `make run` prints)."""
        span = f"{self.first:%Y-%m-%d %H:%M} .. {self.last:%Y-%m-%d %H:%M} UTC" if self.first else "none"
        actions = ", ".join(f"{k} {v}" for k, v in sorted(self.actions.items())) or "none"
        rate = f"{self.valid_rate:.1%}" if self.valid_rate is not None else "n/a"
        lines = [
            f"decisions: {self.decisions} at {self.decision_times} decision time(s), replay {span}",
            f"valid rate: {rate} ({self.valid} valid; {actions})",
            f"risk engine: {self.approved} approved; orders: {self.orders}; fills: {self.fills}",
        ]
        if self.orders_by_model:
            by = ", ".join(f"{model}: {n}" for model, n in sorted(self.orders_by_model.items()))
            lines.append(f"orders by the model that decided them: {by}")
        if self.session_return is not None:
            pnl = self.equity_end - self.equity_start  # type: ignore[operator]
            hold = f"{self.buy_and_hold_return:+.2%}" if self.buy_and_hold_return is not None else "n/a"
            lines.append(
                f"P&L: {pnl:+,.2f} USD ({self.session_return:+.2%}) on {self.equity_start:,.2f}; "
                f"buy-and-hold of the same symbols: {hold}"
            )
        if self.latency_p50_ms is not None:
            lines.append(
                f"decision latency: p50 {self.latency_p50_ms:,.1f} ms, p99 {self.latency_p99_ms:,.1f} ms"
            )
        return lines


def summarize_journal(warehouse: Warehouse, run_id: str) -> JournalSummary:
    def rows(table: str) -> pl.DataFrame:
        return warehouse.read(table).filter(pl.col("run_id") == run_id)

    decisions = rows("decisions").sort("time", "symbol")
    verdicts, orders, fills = rows("risk_verdicts"), rows("orders"), rows("fills")
    equity = rows("equity").sort("time")
    latency = decisions["latency_ms"].drop_nulls().to_numpy()
    p50, p99 = np.percentile(latency, [50, 99]) if latency.size else (None, None)
    submitted = orders.filter(pl.col("client_order_id").is_not_null())["client_order_id"].n_unique()
    approved = verdicts.filter(pl.col("verdict") == "approved")
    models = approved.join(
        decisions.select("time", "symbol", "provider", "model_version"), on=["time", "symbol"]
    )
    by_model = models.select(pl.coalesce("model_version", "provider").fill_null("unknown").alias("model"))
    return JournalSummary(
        run_id=run_id,
        decisions=decisions.height,
        valid=int(decisions["valid"].sum() or 0),
        decision_times=decisions["time"].n_unique(),
        actions={str(a): int(n) for a, n in decisions["action"].value_counts().iter_rows()},
        approved=approved.height,
        orders=submitted,
        fills=fills.height,
        equity_start=float(equity["equity"][0]) if equity.height else None,
        equity_end=float(equity["equity"][-1]) if equity.height else None,
        buy_and_hold_return=_buy_and_hold(decisions),
        latency_p50_ms=None if p50 is None else float(p50),
        latency_p99_ms=None if p99 is None else float(p99),
        first=decisions["time"].min() if decisions.height else None,
        last=decisions["time"].max() if decisions.height else None,
        orders_by_model={str(m): int(n) for m, n in by_model["model"].value_counts().iter_rows()},
    )


def side_by_side(warehouse: Warehouse, run_ids: list[str], roles: dict[str, str]) -> list[str]:
    """One line per run (the trading session and its shadows): who decided, the HOLD/BUY/SELL counts,
    orders (a shadow's are never sent), P&L against buy-and-hold and decision latency."""
    header = f"{'run':<40} {'role':<8} {'decisions':>9} {'HOLD/BUY/SELL':>14} {'orders':>6} {'P&L':>8} {'hold':>8} {'p50 ms':>9}"
    lines = [header]
    for run_id in run_ids:
        summary = summarize_journal(warehouse, run_id)
        acts = "/".join(str(summary.actions.get(a, 0)) for a in ("HOLD", "BUY", "SELL"))
        pnl = f"{summary.session_return:+.2%}" if summary.session_return is not None else "n/a"
        hold = f"{summary.buy_and_hold_return:+.2%}" if summary.buy_and_hold_return is not None else "n/a"
        p50 = f"{summary.latency_p50_ms:,.0f}" if summary.latency_p50_ms is not None else "n/a"
        lines.append(
            f"{run_id:<40} {roles.get(run_id, ''):<8} {summary.decisions:>9} {acts:>14} {summary.orders:>6} "
            f"{pnl:>8} {hold:>8} {p50:>9}"
        )
    return lines


def _buy_and_hold(decisions: pl.DataFrame) -> float | None:
    """Equal-weight return of holding each symbol from its first to its last journaled state's price."""
    prices: dict[str, list[float]] = {}
    for symbol, state in decisions.select("symbol", "state").iter_rows():
        if state is None:
            continue
        price = json.loads(state).get("price")
        if isinstance(price, int | float) and price > 0:
            prices.setdefault(symbol, []).append(float(price))
    returns = [p[-1] / p[0] - 1 for p in prices.values() if len(p) >= 2]
    return float(np.mean(returns)) if returns else None


@dataclass(frozen=True)
class PaperRecord:
    """A registered version's forward record: every live run that decided with it, trading or in shadow."""

    version: str
    runs: list[str]
    decisions: int
    compounded_return: float | None  # the runs' returns, one after the other
    compounded_buy_and_hold: float | None

    def describe(self) -> str:
        if not self.runs:
            return f"no forward (paper) record of version {self.version} yet"
        ret = f"{self.compounded_return:+.2%}" if self.compounded_return is not None else "n/a"
        hold = f"{self.compounded_buy_and_hold:+.2%}" if self.compounded_buy_and_hold is not None else "n/a"
        return (
            f"forward (paper) record of version {self.version}: {self.decisions} decisions in "
            f"{len(self.runs)} live run(s) (trading or in shadow), return {ret} vs buy-and-hold {hold}"
        )


def paper_record(warehouse: Warehouse, version: str) -> PaperRecord:
    """What live sessions journaled of `version`, from the `sessions` rows that name it."""
    sessions = warehouse.read("sessions")
    runs = (
        sorted(set(sessions.filter(pl.col("model_version") == version)["run_id"].to_list()))
        if not sessions.is_empty()
        else []
    )
    summaries = [summarize_journal(warehouse, run_id) for run_id in runs]
    returns = [s.session_return for s in summaries if s.session_return is not None]
    holds = [s.buy_and_hold_return for s in summaries if s.buy_and_hold_return is not None]
    return PaperRecord(
        version=version,
        runs=runs,
        decisions=sum(s.decisions for s in summaries),
        compounded_return=float(np.prod([1 + r for r in returns]) - 1) if returns else None,
        compounded_buy_and_hold=float(np.prod([1 + r for r in holds]) - 1) if holds else None,
    )


def journal_profile(warehouse: Warehouse, run_ids: Sequence[str]) -> DecisionProfile | None:
    """What the decisions journaled under `run_ids` look like together (`llm.behaviour.DecisionProfile`:
    action shares, mean confidence, reasoning variety, invalid rate); None when they journaled nothing."""
    columns = ["run_id", "action", "valid", "decision"]
    rows = warehouse.read("decisions", columns=columns).filter(pl.col("run_id").is_in(list(run_ids)))
    if rows.is_empty():
        return None
    parsed = [json.loads(text) if text else {} for text in rows["decision"].to_list()]
    return DecisionProfile.from_columns(
        rows["action"].to_list(),
        [p.get("confidence") for p in parsed],
        [p.get("reasoning") for p in parsed],
        valid=rows["valid"].to_list(),
    )

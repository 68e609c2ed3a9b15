"""How a live run did, from the journal alone: its equity curve against buy-and-hold of the same
symbols, the share of valid model outputs, and what its fills cost against the backtest's
assumptions.

- Buy-and-hold: the run's starting equity split equally over its symbols at the first decision's
  prices (the prices in the journaled states), marked at each equity snapshot.
- Slippage: each fill against the price the decision saw (the last close at decision time), in basis
  points, positive when it cost money (bought higher, sold lower). The backtest fills the same
  decision at the next bar's open with the impact model (`rules.SlippageModel`: at most
  `impact_coefficient x max_participation`) plus `fee_bps`: a live cost above that bound is a sign
  the backtest flattered the policy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from crypto_pipeline.journal.drift import journal_runs, pick_runs
from crypto_pipeline.trading import rules
from crypto_pipeline.warehouse import Warehouse


@dataclass
class LivePerformance:
    run_id: str
    decisions: int
    valid_decisions: int
    valid_rate: float
    orders: int
    fills: int
    equity_start: float | None
    equity_end: float | None
    return_pct: float | None
    buy_hold_return_pct: float | None
    excess_return_pct: float | None
    slippage_bps_mean: float | None
    slippage_bps_p50: float | None
    slippage_bps_p90: float | None
    slippage_fills: int
    backtest_fee_bps: float
    backtest_slippage_bps_max: float
    slippage_within_backtest: bool | None
    plot: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{v:+.2f}%"

        slip = (
            f"slippage mean {self.slippage_bps_mean:.1f} bps, p90 {self.slippage_bps_p90:.1f} bps over "
            f"{self.slippage_fills} fills (backtest bound {self.backtest_slippage_bps_max:g} bps + fee "
            f"{self.backtest_fee_bps:g} bps)"
            if self.slippage_bps_mean is not None
            else "no fills to measure slippage"
        )
        return (
            f"{self.run_id}: {self.decisions} decisions, valid {self.valid_rate:.1%}, {self.orders} orders, "
            f"{self.fills} fills; return {pct(self.return_pct)} vs buy-and-hold {pct(self.buy_hold_return_pct)}; "
            + slip
        )


def live_performance(
    warehouse: Warehouse, run_id: str | None = None, out_dir: Path | None = None
) -> LivePerformance:
    """The performance of `run_id` (default: the newest live run in the journal); with `out_dir`, the
    equity-vs-buy-and-hold PNG is written there."""
    if run_id is None:
        run_id, _ = pick_runs(journal_runs(warehouse))
        if run_id is None:
            raise ValueError(f"no live run in the journal of {warehouse.root}")

    def rows(table: str) -> pl.DataFrame:
        return warehouse.read(table).filter(pl.col("run_id") == run_id)

    decisions, verdicts, orders, fills, equity = (
        rows(t) for t in ("decisions", "risk_verdicts", "orders", "fills", "equity")
    )
    if decisions.is_empty():
        raise ValueError(f"run {run_id!r} has no decisions in the journal")
    prices = _state_prices(decisions)
    equity = equity.sort("time").unique("time", keep="last", maintain_order=True)
    curve = _with_buy_hold(equity.select("time", "equity"), prices)
    start = float(curve["equity"][0]) if curve.height else None
    end = float(curve["equity"][-1]) if curve.height else None
    ret = (end / start - 1) * 100 if start and end is not None else None
    bh = curve["buy_hold"].drop_nulls()
    bh_ret = (float(bh[-1]) / float(bh[0]) - 1) * 100 if bh.len() else None
    costs = _slippage_bps(fills, verdicts, prices)
    bound = (rules.SlippageModel().worst_impact_factor - 1) * 1e4
    valid = int(decisions["valid"].sum())
    result = LivePerformance(
        run_id=run_id,
        decisions=decisions.height,
        valid_decisions=valid,
        valid_rate=valid / decisions.height,
        orders=orders.filter(pl.col("status") == "submitted")["client_order_id"].n_unique(),
        fills=fills.height,
        equity_start=start,
        equity_end=end,
        return_pct=ret,
        buy_hold_return_pct=bh_ret,
        excess_return_pct=ret - bh_ret if ret is not None and bh_ret is not None else None,
        slippage_bps_mean=float(np.mean(costs)) if costs.size else None,
        slippage_bps_p50=float(np.percentile(costs, 50)) if costs.size else None,
        slippage_bps_p90=float(np.percentile(costs, 90)) if costs.size else None,
        slippage_fills=int(costs.size),
        # The backtest's DEFAULT_FEE_BPS (not imported: that would load vectorbt for one constant).
        backtest_fee_bps=rules.FeeSchedule().taker_bps,
        backtest_slippage_bps_max=bound,
        slippage_within_backtest=bool(np.percentile(costs, 90) <= bound) if costs.size else None,
    )
    if out_dir is not None and curve.height:
        from crypto_pipeline.plots import plot_equity_vs_buy_hold

        path = plot_equity_vs_buy_hold(
            curve["time"].to_list(),
            curve["equity"].to_list(),
            curve["buy_hold"].to_list(),
            Path(out_dir) / f"live_performance_{run_id}.png",
            f"live run {run_id}: {result.return_pct or 0:+.2f}% vs buy-and-hold {bh_ret or 0:+.2f}%",
        )
        result.plot = str(path)
    return result


def shadows_of(warehouse: Warehouse, run_id: str) -> list[str]:
    """The shadow books that ran beside session `run_id` (the journal's `sessions` rows)."""
    sessions = warehouse.read("sessions")
    if sessions.is_empty():
        return []
    mine = sessions.filter((pl.col("trading_run_id") == run_id) & (pl.col("role") == "shadow"))
    return sorted(set(mine["run_id"].to_list()))


def _state_prices(decisions: pl.DataFrame) -> pl.DataFrame:
    """(time, symbol, price) of every journaled state: the prices each decision saw."""
    out = [
        (t, s, float(json.loads(state)["price"]))
        for t, s, state in decisions.select("time", "symbol", "state").iter_rows()
        if state
    ]
    return pl.DataFrame(
        out, schema={"time": decisions.schema["time"], "symbol": pl.Utf8, "price": pl.Float64}, orient="row"
    ).sort("time")


def _with_buy_hold(equity: pl.DataFrame, prices: pl.DataFrame) -> pl.DataFrame:
    """`equity` with a `buy_hold` column: the first snapshot's equity in equal parts of each symbol
    at the first prices, marked at the latest price known at each snapshot."""
    if equity.is_empty() or prices.is_empty():
        return equity.with_columns(pl.lit(None, pl.Float64).alias("buy_hold"))
    first = prices.group_by("symbol").agg(pl.col("price").sort_by("time").first().alias("p0"))
    marked = []
    for symbol in first["symbol"].to_list():
        series = prices.filter(pl.col("symbol") == symbol).select("time", pl.col("price").alias(symbol))
        marked.append(equity.select("time").sort("time").join_asof(series, on="time")[symbol])
    p0 = dict(first.iter_rows())
    relative = pl.DataFrame({s.name: s / p0[s.name] for s in marked})
    # Before the first decision there is no price: hold cash (relative value 1).
    growth = relative.fill_null(1.0).mean_horizontal()
    return equity.sort("time").with_columns((growth * equity["equity"][0]).alias("buy_hold"))


def _slippage_bps(fills: pl.DataFrame, verdicts: pl.DataFrame, prices: pl.DataFrame) -> np.ndarray:
    """Each decision's fill against the price its decision saw, in bps, positive when it cost."""
    if fills.is_empty() or verdicts.is_empty():
        return np.array([])
    decided = verdicts.filter(pl.col("client_order_id").is_not_null()).select(
        "client_order_id", pl.col("time").alias("decided"), "symbol"
    )
    joined = fills.select("client_order_id", "side", "price").join(decided, on="client_order_id")
    joined = joined.join(
        prices.rename({"time": "decided", "price": "seen"}), on=["decided", "symbol"], how="inner"
    )
    sign = pl.when(pl.col("side") == "buy").then(1.0).otherwise(-1.0)
    return joined.select((sign * (pl.col("price") / pl.col("seen") - 1) * 1e4).alias("bps"))["bps"].to_numpy()

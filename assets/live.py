"""`live_performance`: a live run's equity against buy-and-hold, valid-decision rate and slippage
against the backtest's assumptions, from the journal (`crypto_pipeline.journal.performance`)."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.resources import WarehouseResource
from crypto_pipeline.journal.performance import live_performance as summarize
from crypto_pipeline.journal.performance import shadows_of
from crypto_pipeline.plots import png_markdown


class LivePerformanceConfig(dg.Config):
    run_id: str | None = Field(None, description="Live run (session id) to summarize; None: the newest.")


@dg.asset(group_name="live", kinds={"duckdb", "matplotlib"})
def live_performance(config: LivePerformanceConfig, warehouse: WarehouseResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    perf = summarize(wh, config.run_id, out_dir=Path(wh.root) / "reports")
    metadata: dict = {k: v for k, v in perf.as_dict().items() if v is not None and k != "plot"}
    metadata["summary"] = dg.MetadataValue.text(perf.summary())
    if perf.plot:
        metadata["equity_vs_buy_hold"] = dg.MetadataValue.md(png_markdown(perf.plot, "equity"))
        metadata["plot"] = dg.MetadataValue.path(perf.plot)
    # The shadow books that decided beside it, on the same states: the forward record of challengers.
    shadows = [summarize(wh, run_id) for run_id in shadows_of(wh, perf.run_id)]
    if shadows:
        metadata["side_by_side"] = dg.MetadataValue.md(side_by_side_md([perf, *shadows]))
        metadata["shadows"] = ", ".join(s.run_id for s in shadows)
    return dg.MaterializeResult(metadata=metadata)


def side_by_side_md(runs: list) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.2f}%"

    rows = [
        "| run | decisions | valid | orders / shadow orders | fills | return | buy-and-hold |",
        "|---|---|---|---|---|---|---|",
    ]
    rows += [
        f"| {p.run_id} | {p.decisions} | {p.valid_rate:.0%} | {p.orders} | {p.fills} | {pct(p.return_pct)} | "
        f"{pct(p.buy_hold_return_pct)} |"
        for p in runs
    ]
    return "\n".join(rows)

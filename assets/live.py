"""`live_performance`: a live run's equity against buy-and-hold, valid-decision rate and slippage
against the backtest's assumptions, from the journal (`crypto_pipeline.journal.performance`)."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.resources import WarehouseResource
from crypto_pipeline.journal.performance import live_performance as summarize
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
    return dg.MaterializeResult(metadata=metadata)

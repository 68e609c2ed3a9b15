"""Walk-forward backtests as Dagster assets: baselines and the LLM per fold (a fold is a partition, so
folds run in parallel on the multiprocess executor or a cluster executor), then one report.

Each asset is a thin call into `crypto_pipeline.backtest`."""

import base64
from dataclasses import replace
from pathlib import Path

import dagster as dg
from pydantic import Field

from crypto_pipeline.backtest.audits import truncation_audit
from crypto_pipeline.backtest.cache import DecisionCache
from crypto_pipeline.backtest.folds import fold_by_key
from crypto_pipeline.backtest.walkforward import (
    MarketData,
    WalkForwardConfig,
    load_fold_results,
    save_fold_results,
    walk_forward,
)
from crypto_pipeline.config import get_settings

_SETTINGS = get_settings()
DEFAULT_WF = WalkForwardConfig(symbols=tuple(_SETTINGS.symbols), data_dir=_SETTINGS.market_data_dir)
FOLD_PARTITIONS = dg.StaticPartitionsDefinition([f.key for f in DEFAULT_WF.folds()])


class BacktestConfig(dg.Config):
    symbols: list[str] = Field(default=list(DEFAULT_WF.symbols))
    decision_every_hours: float = Field(default=DEFAULT_WF.decision_every_hours)
    llm_decision_every_hours: float = Field(
        default=12.0,
        description="LLM decisions are the slow part: fewer of them keep a cold run under 10 min.",
    )
    llm_policy: str = Field(
        default="llm", description="llm (base model) or llm:ALIAS_OR_VERSION of crypto-policy."
    )


def _results_dir() -> Path:
    return get_settings().warehouse_dir / "reports" / "walk_forward" / "folds"


def _config(config: BacktestConfig, every: float) -> WalkForwardConfig:
    return WalkForwardConfig(
        symbols=tuple(config.symbols), decision_every_hours=every, data_dir=get_settings().market_data_dir
    )


def _table_md(report) -> str:  # noqa: ANN001 - a WalkForwardReport
    return (
        report.per_fold()
        .drop([c for c in report.per_fold().columns if c.startswith("llm_")])
        .to_pandas()
        .to_markdown(index=False, floatfmt=".4g")
    )


@dg.asset(partitions_def=FOLD_PARTITIONS, group_name="backtest", kinds={"vectorbt", "lightgbm"})
def baseline_backtests(context: dg.AssetExecutionContext, config: BacktestConfig) -> dg.MaterializeResult:
    """buy_hold, ema_cross, rsi, LightGBM and RuleBased (through the risk engine) on one fold."""
    from crypto_pipeline.llm.rule_based import RuleBased

    wf = _config(config, config.decision_every_hours)
    fold = fold_by_key(wf.folds(), context.partition_key)
    report = walk_forward(wf, providers={"rules": RuleBased()}, folds=[fold])
    save_fold_results(report.results, _results_dir())
    return dg.MaterializeResult(
        metadata={"fold": fold.as_dict().__repr__(), "results": dg.MetadataValue.md(_table_md(report))}
    )


@dg.asset(partitions_def=FOLD_PARTITIONS, group_name="backtest", kinds={"vectorbt", "transformers"})
def llm_backtests(context: dg.AssetExecutionContext, config: BacktestConfig) -> dg.MaterializeResult:
    """The LLM policy on one fold, through the risk engine, decisions cached by (model version, prompt hash)."""
    from crypto_pipeline.backtest.run import make_provider

    wf = replace(_config(config, config.llm_decision_every_hours), symbols=tuple(config.llm_symbols))
    fold = fold_by_key(wf.folds(), context.partition_key)
    cache = DecisionCache(get_settings().warehouse_dir / "decision_cache.parquet")
    provider = make_provider(config.llm_policy)
    report = walk_forward(
        wf, signal_policies=(), providers={config.llm_policy: provider}, folds=[fold], cache=cache
    )
    save_fold_results(report.results, _results_dir())
    llm = report.results[0].llm
    return dg.MaterializeResult(
        metadata={"results": dg.MetadataValue.md(_table_md(report)), **{k: float(v) for k, v in llm.items()}}
    )


@dg.asset(deps=[baseline_backtests, llm_backtests], group_name="backtest", kinds={"matplotlib", "html"})
def walk_forward_report(context: dg.AssetExecutionContext, config: BacktestConfig) -> dg.MaterializeResult:
    """Every policy over every fold: comparison table with Sharpe intervals, equity and drawdown PNG, audits."""
    from crypto_pipeline.backtest.report import write_report
    from crypto_pipeline.llm.rule_based import RuleBased

    wf = _config(config, config.decision_every_hours)
    report = load_fold_results(_results_dir(), wf.folds())
    data = MarketData.load(wf)
    bars_by_tf = {"1h": data.bars}
    samples = [(s, f.test_start) for f in report.folds for s in wf.symbols][:6]
    audits = [truncation_audit(lambda _: RuleBased(), bars_by_tf, samples)]
    paths = write_report(report, _results_dir().parent, audits)
    png = base64.b64encode(paths["png"].read_bytes()).decode()
    table = report.table()
    return dg.MaterializeResult(
        metadata={
            "table": dg.MetadataValue.md(table.to_pandas().to_markdown(index=False, floatfmt=".3g")),
            "equity_and_drawdowns": dg.MetadataValue.md(f"![walk-forward](data:image/png;base64,{png})"),
            "html": dg.MetadataValue.path(str(paths["html"])),
            "audits_passed": all(a.passed for a in audits),
        }
    )

"""Walk-forward backtests as Dagster assets: baselines and the LLM per fold (a fold is a partition, so
folds run in parallel on the multiprocess executor or a cluster executor), then one report.

Each asset is a thin call into `crypto_pipeline.backtest`."""

from dataclasses import replace
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.training import MlflowResource
from crypto_pipeline.backtest.audits import truncation_audit
from crypto_pipeline.backtest.cache import DecisionCache
from crypto_pipeline.backtest.folds import fold_by_key
from crypto_pipeline.backtest.gate import decide_promotion, record_in_mlflow
from crypto_pipeline.backtest.journaling import journal_policy_run
from crypto_pipeline.backtest.profiles import journal_run_id, policy_profile, policy_profiles, profile_lines
from crypto_pipeline.backtest.run import llm_policy_name
from crypto_pipeline.backtest.walkforward import (
    LLM_WALK_FORWARD,
    LLMWalkForward,
    MarketData,
    WalkForwardConfig,
    load_fold_results,
    save_fold_results,
    walk_forward,
)
from crypto_pipeline.config import Settings, get_settings, with_llm_dtype
from crypto_pipeline.errors import UserInputError
from crypto_pipeline.journal.summary import journal_profile, paper_record
from crypto_pipeline.plots import png_markdown
from crypto_pipeline.registry import CHALLENGER, CHAMPION, MODEL_NAME, RegisteredModel, make_provider, resolve
from crypto_pipeline.warehouse import Warehouse

_SETTINGS = get_settings()
DEFAULT_WF = WalkForwardConfig(symbols=tuple(_SETTINGS.symbols), data_dir=_SETTINGS.market_data_dir)
FOLD_PARTITIONS = dg.StaticPartitionsDefinition([f.key for f in DEFAULT_WF.folds()])


class BacktestConfig(dg.Config):
    symbols: list[str] = Field(default=list(DEFAULT_WF.symbols))
    decision_every_hours: float = Field(default=DEFAULT_WF.decision_every_hours)
    llm_decision_every_hours: float = Field(
        default=LLM_WALK_FORWARD.decision_every_hours,
        description="LLM decisions are the slow part: fewer of them keep a cold run under 10 min.",
    )
    llm_policy: str = Field(
        default="llm:challenger", description="llm (base model) or llm:ALIAS_OR_VERSION of crypto-policy."
    )
    llm_symbols: list[str] = Field(
        default=list(LLM_WALK_FORWARD.symbols),
        description="Symbols the LLM decides on (empty: `symbols`); each costs minutes.",
    )
    audit_samples: int = Field(
        default=LLM_WALK_FORWARD.audit_samples,
        description="Decisions re-made per fold by the leakage audits.",
    )
    llm_dtype: str | None = Field(
        default=None,
        description="The LLMs' number format: auto | float32 | bfloat16; empty: CRYPTO_PIPELINE_LLM_DTYPE.",
    )


def results_dir() -> Path:
    """Each policy's fold results on every symbol (the report's ground); the report is written beside."""
    return get_settings().warehouse_dir / "reports" / "walk_forward" / "folds"


def gate_dir() -> Path:
    """The gate's ground: the LLMs and every baseline on the LLM's symbols, folds and decision times."""
    return results_dir().parent / "gate"


def walk_forward_config(config: BacktestConfig, every: float) -> WalkForwardConfig:
    """The walk-forward of an asset's run config, with a decision every `every` hours."""
    return WalkForwardConfig(
        symbols=tuple(config.symbols), decision_every_hours=every, data_dir=get_settings().market_data_dir
    )


def _table_md(report) -> str:  # noqa: ANN001 - a WalkForwardReport
    return (
        report.per_fold()
        .drop([c for c in report.per_fold().columns if c.startswith("decision_")])
        .to_pandas()
        .to_markdown(index=False, floatfmt=".4g")
    )


@dg.asset(partitions_def=FOLD_PARTITIONS, group_name="backtest", kinds={"vectorbt", "lightgbm"})
def baseline_backtests(context: dg.AssetExecutionContext, config: BacktestConfig) -> dg.MaterializeResult:
    """buy_hold, ema_cross, rsi, LightGBM and RuleBased (through the risk engine) on one fold."""
    from crypto_pipeline.llm.rule_based import RuleBased

    wf = walk_forward_config(config, config.decision_every_hours)
    fold = fold_by_key(wf.folds(), context.partition_key)
    report = walk_forward(wf, providers={"rules": RuleBased()}, folds=[fold])
    save_fold_results(report.results, results_dir())
    return dg.MaterializeResult(
        metadata={"fold": fold.as_dict().__repr__(), "results": dg.MetadataValue.md(_table_md(report))}
    )


GATE_SIGNALS = ("buy_hold", "ema_cross", "rsi", "lgbm")  # with RuleBased: every baseline


def _settings(mlflow: MlflowResource) -> Settings:
    """The settings with MLflow where the resource points (its sqlite store lives in `mlruns_dir`)."""
    settings = get_settings()
    uri = mlflow.uri
    if uri != settings.mlflow_tracking_uri and uri.startswith("sqlite:///"):
        settings = settings.model_copy(update={"mlruns_dir": Path(uri.removeprefix("sqlite:///")).parent})
    return settings


def _champion(settings: Settings, challenger: RegisteredModel) -> RegisteredModel | None:
    try:
        found = resolve(CHAMPION, settings)
    except UserInputError:  # no champion yet
        return None
    return None if found.version == challenger.version else found


@dg.asset(partitions_def=FOLD_PARTITIONS, group_name="backtest", kinds={"vectorbt", "transformers"})
def llm_backtests(
    context: dg.AssetExecutionContext, config: BacktestConfig, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """The LLM (the registered challenger, and the champion if another version holds it) on one fold,
    through the risk engine, decisions cached in the warehouse by (model version, prompt hash), with the
    three leakage audits on the challenger. A fold that starts before the model's training cutoff (plus
    purge and embargo) is not out of sample: it is skipped and says so.

    The gate's rivals run here too, on the LLM's own ground (its symbols, this fold, RuleBased at its
    decision times), so that `promotion` compares like for like; the report keeps the baselines on
    every symbol from `baseline_backtests`."""
    from crypto_pipeline.llm.rule_based import RuleBased

    settings = with_llm_dtype(_settings(mlflow), config.llm_dtype)
    wf = replace(
        walk_forward_config(config, config.llm_decision_every_hours),
        symbols=tuple(config.llm_symbols or config.symbols),
    )
    fold = fold_by_key(wf.folds(), context.partition_key)
    providers, audited, cutoff = {}, (), None
    if config.llm_policy == "llm":
        providers["llm"] = make_provider("llm", settings).provider
        audited = ("llm",)
    else:
        challenger = resolve(config.llm_policy.split(":", 1)[1], settings)
        champion = _champion(settings, challenger)
        cutoffs = [m.training_cutoff for m in (challenger, champion) if m is not None and m.training_cutoff]
        cutoff = max(cutoffs) if cutoffs else None
        for found in (challenger, champion):
            if found is not None:
                providers[llm_policy_name(found.version)] = make_provider(
                    f"llm:{found.version}", settings
                ).provider
        audited = (llm_policy_name(challenger.version),)
    if cutoff is not None and fold.key not in {f.key for f in wf.folds(training_cutoff=cutoff.isoformat())}:
        note = f"{fold.key} starts before the training cutoff {cutoff:%Y-%m-%d %H:%M} + purge + embargo"
        context.log.info(note)
        return dg.MaterializeResult(metadata={"skipped": note})
    cache = DecisionCache(Warehouse(settings.warehouse_dir))
    llms = list(providers)
    report = walk_forward(
        wf,
        signal_policies=GATE_SIGNALS,
        providers={**providers, "rules": RuleBased()},
        folds=[fold],
        cache=cache,
        audited=audited,
        audit_samples=config.audit_samples,
    )
    save_fold_results([r for r in report.results if r.policy in llms], results_dir())
    save_fold_results(report.results, gate_dir())
    # The LLMs' runs into the live journal tables (run `backtest-<policy>-<fold>`): one query compares
    # live with backtest, and drift_sensor takes the newest as what live trading should look like.
    journaled = {
        r.policy: journal_policy_run(
            Warehouse(settings.warehouse_dir), journal_run_id(r.policy, fold.key), r.run
        )
        for r in report.results
        if r.policy in llms and r.run is not None and r.run.states
    }
    audits = [a for r in report.results for a in r.audits]
    ours = next(r for r in report.results if r.policy == audited[0])
    return dg.MaterializeResult(
        metadata={
            "policies": ", ".join(llms),
            "journaled": ", ".join(f"{p}: {n.get('decisions', 0)} decisions" for p, n in journaled.items()),
            "gate_ground": f"{', '.join(wf.symbols)}; {fold.key}; decisions every {wf.decision_every_hours:g} h",
            "results": dg.MetadataValue.md(_table_md(report)),
            "audits": dg.MetadataValue.md("\n".join(f"- {a.name}: {a.passed} ({a.detail})" for a in audits)),
            "audits_passed": all(a.passed for a in audits),
            # Each version's action shares, mean confidence and reasoning variety on this fold.
            "decision_profiles": dg.MetadataValue.md(
                "\n".join(
                    f"- {line}"
                    for line in profile_lines({p: v for p, v in policy_profiles(report).items() if p in llms})
                )
            ),
            **{k: float(v) for k, v in ours.llm.items()},
        }
    )


@dg.asset(deps=[baseline_backtests, llm_backtests], group_name="backtest", kinds={"matplotlib", "html"})
def walk_forward_report(context: dg.AssetExecutionContext, config: BacktestConfig) -> dg.MaterializeResult:
    """Every policy over every fold: comparison table with Sharpe intervals, equity and drawdown PNG, audits
    (RuleBased's truncation audit here; each LLM fold's three audits from `llm_backtests`)."""
    from crypto_pipeline.backtest.report import write_report
    from crypto_pipeline.llm.rule_based import RuleBased

    wf = walk_forward_config(config, config.decision_every_hours)
    report = load_fold_results(results_dir(), wf.folds())
    data = MarketData.load(wf)
    samples = [(s, f.test_start) for f in report.folds for s in wf.symbols][:6]
    audits = [
        truncation_audit(lambda _: RuleBased(), data.bars_by_tf, samples, lookback_days=data.lookback_days)
    ]
    llm_audits = [replace(a, name=f"{r.policy} {r.fold} {a.name}") for r in report.results for a in r.audits]
    llm = LLMWalkForward(
        tuple(config.llm_symbols or config.symbols), config.llm_decision_every_hours, config.audit_samples
    )
    paths = write_report(report, results_dir().parent, [*audits, *llm_audits], extra=llm.describe(wf))
    table = report.table()
    # Each provider's decisions as a whole (every LLM version, the rules): exact from the journal where
    # `llm_backtests` journaled the folds, else from the stored per-fold figures.
    profiles = policy_profiles(report, Warehouse(get_settings().warehouse_dir))
    return dg.MaterializeResult(
        metadata={
            "table": dg.MetadataValue.md(table.to_pandas().to_markdown(index=False, floatfmt=".3g")),
            "equity_and_drawdowns": dg.MetadataValue.md(png_markdown(paths["png"], "walk-forward")),
            "html": dg.MetadataValue.path(str(paths["html"])),
            "llm_walk_forward": llm.describe(wf),
            "decision_profiles": dg.MetadataValue.md(
                "\n".join(f"- {line}" for line in profile_lines(profiles))
            ),
            "audits_passed": all(a.passed for a in [*audits, *llm_audits]),
            "audits": dg.MetadataValue.md(
                "\n".join(
                    f"- {a.name}: {'pass' if a.passed else 'FAIL'} ({a.detail})"
                    for a in [*audits, *llm_audits]
                )
            ),
        }
    )


@dg.asset(deps=[walk_forward_report, llm_backtests], group_name="backtest", kinds={"mlflow"})
def promotion(config: BacktestConfig, mlflow: MlflowResource) -> dg.MaterializeResult:
    """The promotion gate on the challenger's out-of-sample folds, against the rivals `llm_backtests`
    ran on the challenger's own ground (the same bars): the verdict and every reason go to MLflow (tags
    on the version) and to this metadata; `champion` moves only on promotion. No model passing is an
    honest outcome, not a failure."""
    settings = _settings(mlflow)
    ref = config.llm_policy.split(":", 1)[1] if ":" in config.llm_policy else CHALLENGER
    challenger = resolve(ref, settings)
    champion = _champion(settings, challenger)
    report = load_fold_results(gate_dir(), walk_forward_config(config, config.decision_every_hours).folds())
    ours = llm_policy_name(challenger.version)
    warehouse = Warehouse(settings.warehouse_dir)
    paper = paper_record(warehouse, challenger.version)
    decision = decide_promotion(
        report,
        ours,
        champion=llm_policy_name(champion.version) if champion else None,
        audits=report.audits(ours),
        paper=paper,
        profile=policy_profile(report, ours, warehouse),
        paper_profile=journal_profile(warehouse, paper.runs) if paper.runs else None,
    )
    out = record_in_mlflow(mlflow.get_client(), MODEL_NAME, challenger.version, decision)
    return dg.MaterializeResult(
        metadata={
            "promoted": out["promoted"],
            "challenger": out["challenger"],
            "champion_before": str(out["champion_before"]),
            "champion_after": str(out["champion_after"]),
            "verdict": "promoted to champion" if out["promoted"] else "not promoted: the champion stays",
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in out["reasons"])),
            # What the intervals are worth: "for" | "against" | "insufficient", on how many decisions.
            "evidence": out["evidence"],
            "decisions": out["decisions"],
            "intervals": dg.MetadataValue.json(out["intervals"]),
            "decision_profile": dg.MetadataValue.json(out["profile"] or {}),
            "degenerate": "; ".join(out["degenerate"]),
            "table": dg.MetadataValue.md(
                report.table().to_pandas().to_markdown(index=False, floatfmt=".3g") if report.results else ""
            ),
        }
    )

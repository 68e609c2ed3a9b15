"""Walk-forward backtests as Dagster assets: baselines and the LLM per fold (a fold is a partition, so
baseline folds run in parallel on the multiprocess executor or a cluster executor), then one report.
`llm_backtests` runs a range of folds as one run (single-run backfill): its folds decide concurrently,
every model call carrying every fold's states.

Each asset is a thin call into `crypto_pipeline.backtest`."""

import warnings
from dataclasses import replace
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.partitions import SINGLE_RUN_BACKFILL
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
from crypto_pipeline.llm.provider import DecisionProvider
from crypto_pipeline.plots import png_markdown
from crypto_pipeline.registry import (
    CHALLENGER,
    CHAMPION,
    MODEL_NAME,
    ProviderOptions,
    RegisteredModel,
    make_provider,
    resolve,
)
from crypto_pipeline.warehouse import Warehouse

_SETTINGS = get_settings()
DEFAULT_WF = WalkForwardConfig(symbols=tuple(_SETTINGS.symbols), data_dir=_SETTINGS.market_data_dir)
FOLD_PARTITIONS = dg.StaticPartitionsDefinition([f.key for f in DEFAULT_WF.folds()])


class BacktestConfig(dg.Config):
    symbols: list[str] = Field(default=list(DEFAULT_WF.symbols))
    decision_every_hours: float = Field(default=DEFAULT_WF.decision_every_hours)
    llm_decision_every_hours: float = Field(
        default=LLM_WALK_FORWARD.decision_every_hours,
        description="LLM decisions are the slow part: a decision every this many hours.",
    )
    llm_policy: str = Field(
        default="llm:challenger", description="llm (base model) or llm:ALIAS_OR_VERSION of crypto-policy."
    )
    llm_symbols: list[str] = Field(
        default=list(LLM_WALK_FORWARD.symbols),
        description="Symbols the LLM decides on (empty: `symbols`).",
    )
    llm_window_days: float = Field(
        default=LLM_WALK_FORWARD.window_days or 0.0,
        description="The LLM decides in the first this many days of each fold (0: the whole fold); the "
        "gate's rivals run on the same days. Keeps a cold run of every fold under 10 min.",
    )
    audit_samples: int = Field(
        default=LLM_WALK_FORWARD.audit_samples,
        description="Decisions re-made per fold by the leakage audits.",
    )
    llm_dtype: str | None = Field(
        default=None,
        description="The LLMs' number format: auto | float32 | bfloat16; empty: CRYPTO_PIPELINE_LLM_DTYPE.",
    )

    def llm_walk_forward(self) -> LLMWalkForward:
        """The LLM walk-forward this config asks for."""
        return LLMWalkForward(
            tuple(self.llm_symbols or self.symbols),
            self.llm_decision_every_hours,
            self.llm_window_days or None,
            self.audit_samples,
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


def _llm_provider(spec: str, settings: Settings, batch_size: int) -> DecisionProvider:
    """The provider `spec` names, a local model batching up to `batch_size` states per generate (its
    weights' number format is `settings.llm_dtype`)."""
    return make_provider(spec, settings, options=ProviderOptions(batch_size=batch_size)).provider


def _decision_figures(results) -> dict[str, float]:  # noqa: ANN001 - FoldResults of one policy
    """One policy's decision figures over its folds: counts summed, shares and means per decision."""
    n = sum(r.llm.get("decisions", 0) for r in results)
    figures: dict[str, float] = {"folds": float(len(results)), "decisions": float(n)}
    for key in ("cache_hits", "cache_misses", "approved"):
        figures[key] = float(sum(r.llm.get(key, 0) for r in results))
    for key in (
        "invalid_rate",
        "buy_share",
        "sell_share",
        "hold_share",
        "mean_confidence",
        "tokens_per_decision",
    ):
        figures[key] = sum(r.llm.get(key, 0.0) * r.llm.get("decisions", 0) for r in results) / n if n else 0.0
    return figures


with warnings.catch_warnings():  # `backfill_policy` is beta and chosen on purpose (see assets/partitions.py)
    warnings.filterwarnings("ignore", category=dg.BetaWarning, message=r".*backfill_policy.*")
    _llm_asset = dg.asset(
        partitions_def=FOLD_PARTITIONS,
        backfill_policy=SINGLE_RUN_BACKFILL,
        group_name="backtest",
        kinds={"vectorbt", "transformers"},
    )


@_llm_asset
def llm_backtests(
    context: dg.AssetExecutionContext, config: BacktestConfig, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """The LLM (the registered challenger, and the champion if another version holds it) on the run's
    folds, through the risk engine, decisions cached in the warehouse by (model version, prompt hash),
    with the three leakage audits on the challenger. A range of fold partitions is one run: its folds
    decide concurrently, each model call carrying every fold's states. The LLM decides in the first
    `llm_window_days` of each fold, on `llm_symbols`, every `llm_decision_every_hours`
    (`walkforward.LLM_WALK_FORWARD`). A fold that starts before the model's training cutoff (plus purge
    and embargo) is not out of sample: it is skipped and says so.

    The gate's rivals run here too, on the LLM's own ground (its symbols, these fold windows, RuleBased
    at its decision times), so that `promotion` compares like for like; the report keeps the baselines
    on every symbol and whole fold from `baseline_backtests`."""
    from crypto_pipeline.llm.rule_based import RuleBased

    settings = with_llm_dtype(_settings(mlflow), config.llm_dtype)
    llm_wf = config.llm_walk_forward()
    wf = llm_wf.config(walk_forward_config(config, config.llm_decision_every_hours))
    folds = [fold_by_key(wf.folds(), key) for key in context.partition_keys]
    specs, audited, cutoff = {}, (), None
    if config.llm_policy == "llm":
        specs["llm"] = "llm"
        audited = ("llm",)
    else:
        challenger = resolve(config.llm_policy.split(":", 1)[1], settings)
        champion = _champion(settings, challenger)
        cutoffs = [m.training_cutoff for m in (challenger, champion) if m is not None and m.training_cutoff]
        cutoff = max(cutoffs) if cutoffs else None
        for found in (challenger, champion):
            if found is not None:
                specs[llm_policy_name(found.version)] = f"llm:{found.version}"
        audited = (llm_policy_name(challenger.version),)
    skipped = []
    if cutoff is not None:
        allowed = {f.key for f in wf.folds(training_cutoff=cutoff.isoformat())}
        skipped = [f.key for f in folds if f.key not in allowed]
        folds = [f for f in folds if f.key in allowed]
    note = (
        f"{', '.join(skipped)}: start(s) before the training cutoff {cutoff:%Y-%m-%d %H:%M} + purge + embargo"
        if skipped and cutoff is not None
        else ""
    )
    if note:
        context.log.info(note)
    if not folds:
        return dg.MaterializeResult(metadata={"skipped": note})
    folds = llm_wf.folds(folds)  # the first `llm_window_days` of each
    batch = max(ProviderOptions().batch_size, len(folds) * len(wf.symbols))  # one generate per step
    providers = {name: _llm_provider(spec, settings, batch) for name, spec in specs.items()}
    cache = DecisionCache(Warehouse(settings.warehouse_dir))
    llms = list(providers)
    report = walk_forward(
        wf,
        signal_policies=GATE_SIGNALS,
        providers={**providers, "rules": RuleBased()},
        folds=folds,
        cache=cache,
        audited=audited,
        audit_samples=config.audit_samples,
    )
    save_fold_results([r for r in report.results if r.policy in llms], results_dir())
    save_fold_results(report.results, gate_dir())
    # The LLMs' runs into the live journal tables (run `backtest-<policy>-<fold>`): one query compares
    # live with backtest, and drift_sensor takes the newest as what live trading should look like.
    journaled = {
        f"{r.policy} {r.fold}": journal_policy_run(
            Warehouse(settings.warehouse_dir), journal_run_id(r.policy, r.fold), r.run
        )
        for r in report.results
        if r.policy in llms and r.run is not None and r.run.states
    }
    audits = [replace(a, name=f"{r.fold} {a.name}") for r in report.results for a in r.audits]
    ours = [r for r in report.results if r.policy == audited[0]]
    windows = "; ".join(f"{f.key} {f.test_start:%Y-%m-%d %H:%M}..{f.test_end:%Y-%m-%d %H:%M}" for f in folds)
    return dg.MaterializeResult(
        metadata={
            "policies": ", ".join(llms),
            "journaled": ", ".join(f"{p}: {n.get('decisions', 0)} decisions" for p, n in journaled.items()),
            "gate_ground": f"{', '.join(wf.symbols)}; {windows}; decisions every {wf.decision_every_hours:g} h",
            "llm_walk_forward": llm_wf.describe(wf),
            **({"skipped": note} if note else {}),
            "results": dg.MetadataValue.md(_table_md(report)),
            "audits": dg.MetadataValue.md("\n".join(f"- {a.name}: {a.passed} ({a.detail})" for a in audits)),
            "audits_passed": all(a.passed for a in audits),
            # Each version's action shares, mean confidence and reasoning variety over these folds.
            "decision_profiles": dg.MetadataValue.md(
                "\n".join(
                    f"- {line}"
                    for line in profile_lines({p: v for p, v in policy_profiles(report).items() if p in llms})
                )
            ),
            **_decision_figures(ours),
            "wall_s": report.wall_s,
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
    llm = config.llm_walk_forward()
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

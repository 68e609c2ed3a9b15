"""`crypto-pipeline run` (and `make run`): the main job end to end on the offline default, then a summary.

By default the local Alpaca-compatible exchange is started in the background (its replay clock set just
after the recorded data, so all of it is history), and `raw_bars` ingests through alpaca-py's
`CryptoHistoricalDataClient` pointed at it: the same code path as real Alpaca. `--source recorded` skips
the exchange and imports the Parquet files directly.

The `market_data` job covers every daily partition in one run (single-run backfill), in process, against
the persistent Dagster instance in $DAGSTER_HOME, so the run shows up in `dagster dev`. The run's source
is passed to the job as a resource: nothing is configured through the environment.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
from rich.console import Console

from assets.resources import MarketDataSourceResource
from assets.training import MlflowResource
from crypto_pipeline.config import Settings, get_settings
from definitions import make_definitions

# Dagster's documented run tags of a single-run backfill over a range of partitions (both keys included).
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"

console = Console(width=max(Console().width, 120))
_SUMMARY_KEYS = (
    *("rows_fetched", "rows_stored", "rows", "warm_rows", "states", "quarantined"),  # market data
    *("examples", "registered", "steps"),  # training: its figures with intervals follow the stage line
    *("audits_passed", "html", "decisions", "invalid_rate", "promoted"),  # walk-forward, gate
)

# The make-run fine-tune, sized for two CPU cores (docs/training.md has the measurements and the options
# tried): float LoRA on the last 4 of the 30 layers, trained on the frozen 26 layers' output computed once
# per example (`cache_lower_layers`), a class-balanced sample of 300 training examples seen twice with
# the action's token weighted 5x in the loss. Then the tuned and the base model's actions are scored on 300
# class-balanced validation and 300 test examples (one forward pass each, intervals, the paired
# difference), beside the logistic-regression ceiling; 16 validation examples are answered in full.
# `crypto-pipeline finetune` takes the same options; `--4bit` runs QLoRA through trl's SFTTrainer.
QUICK_FINETUNE = {
    "load_in_4bit": False,
    "lora_layers": 4,
    "cache_lower_layers": True,
    "learning_rate": 2e-3,
    "max_steps": None,
    "epochs": 2.0,
    "batch_size": 8,
    "max_train_examples": 300,
    "action_loss_weight": 5.0,
    "curve_points": 6,
    "eval_size": 300,
    "generate_size": 16,
}


@contextlib.contextmanager
def local_exchange(settings: Settings, last_day: str) -> Iterator[MarketDataSourceResource]:
    """Start the local exchange for this run with throw-away keys; yield the source that reads from it."""
    from crypto_pipeline.exchange import local_exchange as exchange

    after_last_day = datetime.combine(
        date.fromisoformat(last_day) + timedelta(days=1), datetime.min.time(), UTC
    )
    with exchange(
        host="127.0.0.1",
        data_dir=settings.market_data_dir,
        db_path=settings.warehouse_dir / "exchange-make-run.sqlite",
        start=after_last_day,
        speed=0.0,
        reset=True,
    ) as server:
        config = server.config
        console.print(f"local exchange: {server.base_url} (replay clock {config.start:%Y-%m-%d %H:%M} UTC)")
        yield MarketDataSourceResource(
            kind="alpaca",
            url_override=server.base_url,
            api_key=config.key.get_secret_value(),
            secret_key=config.secret.get_secret_value(),
        )
    console.print("local exchange stopped")


def run_market_data(
    first_day: str, last_day: str, market_data_source: MarketDataSourceResource, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    """The `market_data` job over the days `first_day`..`last_day` (both included) as one run."""
    job = make_definitions(market_data_source=market_data_source).resolve_job_def("market_data")
    tags = {PARTITION_RANGE_START_TAG: first_day, PARTITION_RANGE_END_TAG: last_day}
    return job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)


@dataclass
class StageSummary:
    """What one stage's runs did: per asset, how many partitions and its key figures; failed checks."""

    partitions: dict[str, int] = field(default_factory=dict)
    figures: dict[str, dict[str, object]] = field(default_factory=dict)
    checks: int = 0
    failed: list[str] = field(default_factory=list)  # blocking checks
    warned: list[str] = field(default_factory=list)  # warnings

    def add(self, result: dg.ExecuteInProcessResult) -> None:
        for e in result.get_asset_check_evaluations():
            self.checks += 1
            if not e.passed:
                name = f"{e.asset_key.to_user_string()}.{e.check_name}"
                (self.warned if e.severity == dg.AssetCheckSeverity.WARN else self.failed).append(name)
        for event in result.get_asset_materialization_events():
            mat = event.materialization
            key = mat.asset_key.to_user_string()
            self.partitions[key] = self.partitions.get(key, 0) + 1
            # One run covers every partition, so each partition's event carries the run's totals.
            self.figures[key] = {k: _short(v.value) for k, v in mat.metadata.items() if k in _SUMMARY_KEYS}

    def lines(self) -> list[str]:
        shown = []
        for key, n in self.partitions.items():
            where = f"{n} partitions" if n > 1 else ""
            figures = ", ".join(f"{k}={v}" for k, v in self.figures[key].items())
            shown.append(f"{key:<19} {where:<15} {figures}".rstrip())
        return shown


def _short(value: object) -> object:
    return round(value, 3) if isinstance(value, float) else value


class Stages:
    """Runs the stages of `make run`: one progress line each on the terminal, everything else (Dagster's
    event log, the trainer, the exchange) in one log file."""

    def __init__(self, out: Console, log_path: Path) -> None:
        self.out, self.log_path, self.ok = out, log_path, True
        self.took: dict[str, float] = {}  # stage -> seconds, for the summary

    def run(
        self, name: str, step: Callable[[], dg.ExecuteInProcessResult | list[dg.ExecuteInProcessResult]]
    ) -> bool:
        if not self.ok:
            self.out.print(f"  [dim]-[/] {name:<36} skipped: an earlier stage failed")
            return False
        started = time.perf_counter()
        summary, error = StageSummary(), None
        with (
            self.out.status(f"{name} …"),
            self.log_path.open("a") as log,
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            console.rule(f"stage: {name}")
            try:
                outcome = step()
                results = outcome if isinstance(outcome, list) else [outcome]
            except Exception as exc:  # the stage failed before Dagster could record it: say so, log it
                console.print_exception()
                results, error = [], f"{type(exc).__name__}: {exc}"
        for result in results:
            summary.add(result)
        success = error is None and all(r.success for r in results) and not summary.failed
        self.took[name] = time.perf_counter() - started
        mark = "[green]✓[/]" if success else "[red]✗[/]"
        passed = summary.checks - len(summary.failed) - len(summary.warned)
        detail = f"{passed}/{summary.checks} checks passed" if summary.checks else ""
        self.out.print(f"  {mark} {name:<36} {time.perf_counter() - started:5.0f} s  {detail}")
        for line in summary.lines():
            self.out.print(f"      {line}", highlight=False, markup=False)
        if summary.failed:
            self.out.print(f"      [red]failed checks:[/] {', '.join(summary.failed)}")
        if summary.warned:
            self.out.print(f"      [yellow]warnings (not blocking):[/] {', '.join(summary.warned)}")
        if error:
            self.out.print(f"      [red]{error}[/]", highlight=False)
        self.ok = success
        return success


def training_lines(result: dg.ExecuteInProcessResult) -> list[str]:
    """The fine-tune's figures with their 95% intervals: the tuned and the base model on validation and
    test, the paired difference, the references and the learning curve."""
    meta: dict[str, object] = {}
    for event in result.get_asset_materialization_events():
        if event.materialization.asset_key.to_user_string() == "finetuned_model":
            meta = {k: v.value for k, v in event.materialization.metadata.items()}
    if "val_balanced_accuracy" not in meta:
        return []

    def shown(name: str) -> str:
        if name not in meta:
            return "n/a"
        low, high = meta.get(f"{name}_ci_low"), meta.get(f"{name}_ci_high")
        interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        return f"{meta[name]:.3f}{interval}"

    lines = ["balanced accuracy [95% bootstrap interval]      validation               test"]
    for label, name in (
        ("tuned (challenger)", "{s}_balanced_accuracy"),
        ("base model", "base_{s}_balanced_accuracy"),
        ("tuned minus base (paired)", "tuned_minus_base_{s}_balanced_accuracy"),
        ("logistic regression (ceiling)", "logreg_{s}_balanced_accuracy"),
    ):
        lines.append(f"  {label:<31} {shown(name.format(s='val')):>24} {shown(name.format(s='test')):>24}")
    diff_low = meta.get("tuned_minus_base_test_balanced_accuracy_ci_low")
    if diff_low is not None:
        verdict = (
            "the tuned model beats the base on test (paired interval above 0)"
            if diff_low > 0
            else "no evidence on test that the tuned model beats the base (paired interval reaches 0)"
        )
        lines.append(f"  {verdict}")
    if meta.get("curve"):
        lines.append(f"  learning curve (examples seen: validation balanced accuracy): {meta['curve']}")
    if "val_action_agreement" in meta:
        lines.append(
            f"  answered in full: {meta.get('val_generated_examples', 0):.0f} validation examples, "
            f"valid {meta.get('val_valid_json_rate', 0):.0%}, action as scored {meta['val_action_agreement']:.0%}, "
            f"BUY/SELL/HOLD {meta.get('val_share_buy', 0):.0%}/{meta.get('val_share_sell', 0):.0%}/"
            f"{meta.get('val_share_hold', 0):.0%}, mean confidence {meta.get('val_mean_confidence', 0):.0f}"
        )
    return lines


def run_retrain(instance: dg.DagsterInstance, finetune: dict) -> dg.ExecuteInProcessResult:
    """The `retrain` job (sft_dataset → finetuned_model) on the states just built."""
    job = make_definitions().resolve_job_def("retrain")
    run_config = {"ops": {"finetuned_model": {"config": finetune}}}
    return job.execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)


# The LLM walk-forward of `make run` (`walkforward.LLM_WALK_FORWARD`'s defaults): the challenger on every
# fold after its training cutoff (the 3 default folds: the sft_dataset's train split ends 90 days before
# the data), every symbol, a decision every 4 h in the first 5 days of each fold, one audit sample: 270
# decisions. The folds decide concurrently, so each SmolLM2 call carries 9 states (3 folds x 3 symbols).
# Cold, with the gate's rivals: 408 s (560 CPU-s) on a quiet machine, 76 s from the decision cache
# (docs/backtest.md). The gate then compares it with every baseline on the same fold windows.
# `crypto-pipeline promote` or the Dagster assets run it wider.
QUICK_LLM = {
    "llm_symbols": [],  # every symbol
    "llm_decision_every_hours": 4.0,
    "llm_window_days": 5.0,
    "llm_dtype": "",  # CRYPTO_PIPELINE_LLM_DTYPE (auto: bfloat16 only on CPUs with native bfloat16)
    "audit_samples": 1,
}


def run_walk_forward(instance: dg.DagsterInstance, symbols: list[str]) -> list[dg.ExecuteInProcessResult]:
    """The baselines (and RuleBased through the risk engine) on every walk-forward fold."""
    import assets.backtest as backtest

    config = {"symbols": symbols}
    return [
        dg.materialize(
            [backtest.baseline_backtests],
            partition_key=key,
            instance=instance,
            run_config={"ops": {"baseline_backtests": {"config": config}}},
            raise_on_error=False,
        )
        for key in backtest.FOLD_PARTITIONS.get_partition_keys()
    ]


def run_llm_walk_forward(instance: dg.DagsterInstance, symbols: list[str]) -> dg.ExecuteInProcessResult:
    """`llm_backtests` of the MLflow challenger (and champion, if another) on every fold partition in one
    run (a single-run backfill: the folds decide concurrently, one model call for all of them), with the
    three leakage audits; folds before the training cutoff are skipped by the asset."""
    import assets.backtest as backtest

    keys = backtest.FOLD_PARTITIONS.get_partition_keys()
    config = {"symbols": symbols, **QUICK_LLM}
    return dg.materialize(
        [backtest.llm_backtests],
        instance=instance,
        resources={"mlflow": MlflowResource()},
        run_config={"ops": {"llm_backtests": {"config": config}}},
        tags={PARTITION_RANGE_START_TAG: keys[0], PARTITION_RANGE_END_TAG: keys[-1]},
        raise_on_error=False,
    )


def run_report_and_gate(instance: dg.DagsterInstance, symbols: list[str]) -> dg.ExecuteInProcessResult:
    """`walk_forward_report` over every stored fold, then `promotion` (the gate on the challenger)."""
    import assets.backtest as backtest

    config = {"symbols": symbols, **QUICK_LLM}
    return dg.materialize(
        [backtest.walk_forward_report, backtest.promotion],
        selection=[backtest.walk_forward_report, backtest.promotion],
        instance=instance,
        resources={"mlflow": MlflowResource()},
        run_config={"ops": {"walk_forward_report": {"config": config}, "promotion": {"config": config}}},
        raise_on_error=False,
    )


def comparison_table(result: dg.ExecuteInProcessResult) -> list[str]:
    """ONE table: every policy's stitched out-of-sample return, Sharpe [95% block-bootstrap interval],
    max drawdown and trades on the gate's ground (the challenger's symbols, folds and decision times),
    with the gate's verdict on the challenger's row, then what the evidence is worth (for, against or
    not enough either way, each Sharpe-difference interval with its width and the decisions behind it)
    and the gate's reasons."""
    import assets.backtest as backtest
    from crypto_pipeline.backtest.walkforward import load_fold_results

    gate = {}
    for event in result.get_asset_materialization_events():
        if event.materialization.asset_key.to_user_string() == "promotion":
            gate = {k: v.value for k, v in event.materialization.metadata.items()}
    # The gate's ground: the baselines ran on the challenger's own symbols, fold and decision times
    # (`llm_backtests`), so the rows compare like for like with the verdict beside them.
    wf = backtest.walk_forward_config(backtest.BacktestConfig(), 4.0)
    table = load_fold_results(backtest.gate_dir(), wf.folds()).table()
    challenger = f"llm:{gate['challenger']}" if gate else None
    lines = [f"{'policy':<12} {'return':>8} {'Sharpe [95% CI]':>22} {'max DD':>7} {'trades':>6}  gate"]
    for row in table.iter_rows(named=True):
        verdict = ""
        if row["policy"] == challenger:
            verdict = "PROMOTED to champion" if gate["promoted"] else "not promoted"
        sharpe = f"{row['sharpe']:.2f} [{row['sharpe_lo']:.2f}, {row['sharpe_hi']:.2f}]"
        lines.append(
            f"{row['policy']:<12} {row['total_return']:>8.1%} {sharpe:>22} {row['max_drawdown']:>7.1%} "
            f"{row['trades']:>6}  {verdict}".rstrip()
        )
    lines.append(
        f"(every policy on the challenger's bars; all symbols and folds: {backtest.results_dir().parent})"
    )
    if gate:
        lines.append(
            f"gate: {gate['verdict']} (champion before {gate['champion_before']}, after {gate['champion_after']})"
        )
        if "evidence" in gate:  # a promotion materialized before the gate said what its evidence is worth
            said = {
                "for": "FOR the challenger (every interval above 0)",
                "against": "AGAINST the challenger (an interval below 0)",
                "insufficient": "NOT ENOUGH either way (no interval wholly above or below 0): 'not promoted' says nothing",
            }.get(str(gate["evidence"]), str(gate["evidence"]))
            intervals = "; ".join(
                f"Sharpe difference vs {i['label']} [{i['lo']:.2f}, {i['hi']:.2f}], width {i['width']:.2f}, "
                f"{i['decisions']} decisions, {i['bars']} bars"
                for i in gate.get("intervals") or []
            )
            lines.append(f"evidence: {said}; on {gate['decisions']} decisions: {intervals or 'no interval'}")
        lines.append("reasons:")
        lines += [f"  {line}" for line in str(gate["reasons"]).splitlines()]
    return lines


# The live stage of `make run`: `live_paper` on the replay of the recorded data from QUICK_LIVE's start
# (inside the dataset's test period, after every training label), 5m bars and a decision every hour at
# 3600x (an hour of market time each wall second), a fresh paper account on its own SQLite file. SmolLM2
# on two cores takes seconds per decision time, so the session skips the hours the replay ran past
# meanwhile (see LiveSession._next_decision_time) and still decides a few dozen times in two minutes.
QUICK_LIVE = {
    "timeframe": "5m",
    "decision_interval": "1h",
    "exchange_start": "2024-08-01",
    "lookback_days": 30,
}
LIVE_SPEED = 3600.0


def run_live_paper(
    instance: dg.DagsterInstance,
    settings: Settings,
    session_id: str,
    seconds: float,
    max_decisions: int | None = None,
) -> dg.ExecuteInProcessResult:
    """The `live_paper` job with its default provider ('auto': the champion, else the rules with the newest
    challenger in shadow), bounded to `seconds` (and `max_decisions` decision times), on an exchange it
    starts at LIVE_SPEED."""
    config = {
        **QUICK_LIVE,
        "symbols": list(settings.symbols),
        "session_id": session_id,
        "max_runtime_s": seconds,
        "max_decisions": max_decisions,
        "exchange_speed": LIVE_SPEED,
        "exchange_db": str(settings.warehouse_dir / "exchange-live-make-run.sqlite"),
        "exchange_reset": True,
    }
    job = make_definitions().resolve_job_def("live_paper")
    run_config = {"ops": {"live_paper_session": {"config": config}}}
    return job.execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)


def live_summary(result: dg.ExecuteInProcessResult, settings: Settings, session_id: str) -> list[str]:
    """The session's summary, read back from the journal, with what only the session knows (which model
    decided and why, why it stopped, decision -> order latency), and its shadows side by side."""
    from crypto_pipeline.journal.summary import side_by_side, summarize_journal
    from crypto_pipeline.warehouse import Warehouse

    warehouse = Warehouse(settings.warehouse_dir)
    report = result.output_for_node("live_paper_session")
    lines = [f"session {session_id}: {report.get('provider_note') or report.get('provider')}"]
    lines += summarize_journal(warehouse, session_id).lines()
    if "decision_to_order_p50_ms" in report:
        lines.append(
            f"decision -> order acknowledged: p50 {report['decision_to_order_p50_ms']:.1f} ms, "
            f"p99 {report['decision_to_order_p99_ms']:.1f} ms"
        )
    lines.append(
        f"stopped: {report.get('stop_reason')}; {report.get('decision_times_skipped', 0)} decision time(s) skipped "
        f"while deciding; {report.get('stream_bars', 0)} stream bars, {report.get('gaps_backfilled', 0)} gaps backfilled"
    )
    shadows = report.get("shadows") or []
    if shadows:
        lines.append("side by side (the shadows decided on the same states; their orders were never sent):")
        roles = {session_id: "trading"} | {s["run_id"]: "shadow" for s in shadows}
        lines += [f"  {line}" for line in side_by_side(warehouse, list(roles), roles)]
        lines += [
            f"  {s['run_id']}: {s['skipped']} decision time(s) skipped while busy, {s['failed']} failed"
            for s in shadows
        ]
    return lines


def ui_commands(settings: Settings) -> list[str]:
    """How to look at what the run made: the Dagster UI on this instance, the MLflow UI on its registry."""
    home = os.environ.get("DAGSTER_HOME", str(Path.cwd() / ".dagster_home"))
    return [
        f"Dagster UI: DAGSTER_HOME={home} .venv/bin/dagster-webserver -w workspace.yaml   # http://127.0.0.1:3000",
        f"Live paper: DAGSTER_HOME={home} .venv/bin/dagster job execute -m definitions -j live_paper   # docs/live.md",
        f"MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {settings.mlflow_tracking_uri}   # http://127.0.0.1:5000",
    ]


def run(
    source: str = "exchange",
    train: bool = True,
    live_seconds: float = 120.0,
    live_decisions: int | None = None,
) -> bool:
    """The whole offline run; True when every stage succeeded."""
    if source not in ("exchange", "recorded"):
        raise ValueError(f"unknown source {source!r}: expected 'exchange' or 'recorded'")
    settings = get_settings()
    out = Console(file=sys.stdout, width=max(Console().width, 120))
    log_path = settings.warehouse_dir / "logs" / f"run-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out.rule("[bold]crypto-pipeline: offline end-to-end run")
    out.print(f"symbols: {', '.join(settings.symbols)}  days: {settings.start} .. {settings.end}")
    out.print(f"full logs: {log_path}")
    stages = Stages(out, log_path)
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:

        def market_data() -> dg.ExecuteInProcessResult:
            with contextlib.ExitStack() as stack:
                if source == "exchange":
                    resource = stack.enter_context(local_exchange(settings, settings.end))
                else:
                    resource = MarketDataSourceResource(
                        kind="recorded", data_dir=str(settings.market_data_dir)
                    )
                return run_market_data(settings.start, settings.end, resource, instance)

        via = "alpaca-py → local exchange" if source == "exchange" else "recorded Parquet files"
        stages.run(f"market data ({via})", market_data)
        if train:
            trained: list[dg.ExecuteInProcessResult] = []
            stages.run(
                "dataset + LoRA → MLflow challenger",
                lambda: trained.append(run_retrain(instance, QUICK_FINETUNE)) or trained[-1],
            )
            if trained and trained[-1].success:
                for line in training_lines(trained[-1]):
                    out.print(f"      {line}", highlight=False, markup=False)
            stages.run("walk-forward baselines", lambda: run_walk_forward(instance, settings.symbols))
            stages.run(
                "LLM walk-forward (challenger)", lambda: run_llm_walk_forward(instance, settings.symbols)
            )
            gated: list[dg.ExecuteInProcessResult] = []
            stages.run(
                "report + promotion gate",
                lambda: gated.append(run_report_and_gate(instance, settings.symbols)) or gated[-1],
            )
            if gated and gated[-1].success:
                for line in comparison_table(gated[-1]):
                    out.print(f"      {line}", highlight=False, markup=False)
        if live_seconds > 0:
            session_id = f"make-run-{datetime.now(UTC):%Y%m%dT%H%M%S}"
            lived: list[dg.ExecuteInProcessResult] = []
            stages.run(
                f"live paper session ({live_seconds:g} s at {LIVE_SPEED:g}x)",
                lambda: (
                    lived.append(run_live_paper(instance, settings, session_id, live_seconds, live_decisions))
                    or lived[-1]
                ),
            )
            if lived and lived[-1].success:
                for line in live_summary(lived[-1], settings, session_id):
                    out.print(f"      {line}", highlight=False, markup=False)
    status = "[green]success[/]" if stages.ok else "[red]failure[/]"
    out.print(f"offline run: {status} in {time.perf_counter() - started:.0f} s (full logs: {log_path})")
    reports = settings.warehouse_dir / "reports"
    if stages.ok and reports.is_dir():
        out.print(f"reports and charts: {reports}")
    out.print("stages: " + ", ".join(f"{name} {took:.0f} s" for name, took in stages.took.items()))
    return stages.ok

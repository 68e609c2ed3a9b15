"""`drift_sensor`: when the newest live run's decisions drift from the walk-forward backtest's (action
mix or state features, by PSI; `crypto_pipeline.journal.drift`), request a `retrain` run.

Settings.monitoring names the reference run (default: the newest `backtest...` run in the journal),
the threshold and the fewest live decisions worth judging. One request per (live run, reference)."""

import dagster as dg

from assets.resources import WarehouseResource
from crypto_pipeline.config import get_settings
from crypto_pipeline.journal.drift import journal_drift, journal_runs, pick_runs
from jobs.training import retrain_job


def _drift_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource) -> dg.SensorResult:
    monitoring = get_settings().monitoring
    wh = warehouse.get()
    live, reference = pick_runs(journal_runs(wh), monitoring.drift_reference_run)
    if live is None or reference is None:
        return dg.SensorResult(
            skip_reason=dg.SkipReason(f"no live run ({live}) or reference run ({reference})")
        )
    key = f"drift-{live}-vs-{reference}"
    if context.cursor == key:
        return dg.SensorResult(skip_reason=dg.SkipReason(f"{key}: already acted on"))
    report = journal_drift(
        wh,
        live,
        reference,
        threshold=monitoring.drift_threshold,
        min_decisions=monitoring.drift_min_decisions,
    )
    context.log.info(report.summary())
    if not report.drifted:
        return dg.SensorResult(skip_reason=dg.SkipReason(report.summary()))
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=key, tags={"drift": "; ".join(report.reasons)[:200], "live_run": live})
        ],
        cursor=key,
    )


drift_sensor = dg.sensor(
    job=retrain_job,
    minimum_interval_seconds=600,
    default_status=dg.DefaultSensorStatus.STOPPED,
    name="drift_sensor",
)(_drift_sensor)

"""`kill_switch_sensor`: when the kill flag is set, run `kill_switch` (flatten the account).

`champion_sensor`: when MLflow's `champion` alias of crypto-policy moves, start `live_paper` with the
new version (a running session polls the alias and ends itself cleanly). The cursor is the version
last seen, so each move starts one run."""

import dagster as dg

from assets.resources import WarehouseResource
from assets.training import MlflowResource
from crypto_pipeline.live.kill import kill_flag_path, kill_reason
from crypto_pipeline.registry import CHAMPION, alias_version
from jobs.live import kill_switch, live_paper


def _champion_sensor(context: dg.SensorEvaluationContext, mlflow: MlflowResource) -> dg.SensorResult:
    version = alias_version(mlflow.uri, CHAMPION)
    if version is None or version == context.cursor:
        return dg.SensorResult(skip_reason=dg.SkipReason(f"champion is {version or 'not set'}, unchanged"))
    config = {"ops": {"live_paper_session": {"config": {"provider": "local", "model_alias": CHAMPION}}}}
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=f"champion-{version}", run_config=config, tags={"champion": version})
        ],
        cursor=version,
    )


champion_sensor = dg.sensor(
    job=live_paper,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    name="champion_sensor",
)(_champion_sensor)


def _kill_switch_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource) -> dg.SensorResult:
    # Sessions watch the flag themselves; this flattens the account when the switch is set while none
    # runs. The cursor is the flag's text (it holds the time it was set): one run per setting.
    reason = kill_reason(kill_flag_path(warehouse.get().root))
    if reason is None or reason == context.cursor:
        return dg.SensorResult(skip_reason=dg.SkipReason("kill switch off, or already acted on"))
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"kill-{reason[:60]}")], cursor=reason)


kill_switch_sensor = dg.sensor(
    job=kill_switch,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
    name="kill_switch_sensor",
)(_kill_switch_sensor)

"""`retrain`: rebuild the dataset on the data available now and fine-tune + register a challenger; run
weekly by `weekly_retrain` and on drift by `sensors.drift`."""

import dagster as dg

retrain_job = dg.define_asset_job(
    name="retrain",
    selection=dg.AssetSelection.assets("sft_dataset", "finetuned_model"),
    description="Rebuild the dataset on the data available now and fine-tune + register a challenger.",
)


@dg.schedule(job=retrain_job, cron_schedule="0 3 * * 1", name="weekly_retrain")
def weekly_retrain_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    # The cutoff moves forward with the schedule: labels may end no later than the tick.
    cutoff = context.scheduled_execution_time.isoformat()
    return dg.RunRequest(
        run_key=cutoff,
        run_config={
            "ops": {
                "sft_dataset": {"config": {"cutoff": cutoff}},
                "finetuned_model": {"config": {"training_cutoff": cutoff}},
            }
        },
    )

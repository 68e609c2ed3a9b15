"""A backtest's policy run into the same journal tables as a live session, under its own `run_id`, so
one query (or `live.drift`, or `live.performance`) compares live with backtest.

There is nothing to translate: a backtest runs the live loop's decision step against the simulated
venue, and that step wrote the run's decisions, verdicts, orders, fills and equity into the live
loop's `Journal`, kept in memory (`PolicyRun.journal`). Writing it is idempotent: a run journaled
twice adds nothing."""

from __future__ import annotations

from crypto_pipeline.backtest.engine import PolicyRun
from crypto_pipeline.warehouse import Warehouse


def journal_policy_run(warehouse: Warehouse, run_id: str, run: PolicyRun) -> dict[str, int]:
    """Journal `run` as `run_id` (name backtests `backtest-...`: drift_sensor's default reference);
    returns the rows written per table."""
    if run.journal is None:
        raise ValueError("this PolicyRun carries no journal")
    return run.journal.write_to(warehouse, run_id)

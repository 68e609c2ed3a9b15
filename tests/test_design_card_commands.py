"""The design card's commands for the live job, typed as a user types them in the repository root:
`dagster job execute -m definitions -j live_paper` trades a session in the terminal, and
`dagster job launch -j live_paper` (which reads workspace.yaml) queues one that `dagster-daemon run` (or
`dagster dev`) on the same DAGSTER_HOME starts. Neither passes run config: the session's bounds come from
the environment (CRYPTO_PIPELINE_LIVE_MAX_DECISIONS), and each run journals its decisions under its run id,
with a session row (and run tags) that say what traded and why.

Dagster 1.13's `job execute` finds its code only through -f, -m, --package-name or
--autoload-defs-module-name (or their environment variables): it reads neither workspace.yaml nor
pyproject.toml, so the bare `dagster job execute -j live_paper` is refused (docs/live.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from crypto_pipeline.config import DEFAULT_SYMBOLS, REPO_ROOT
from crypto_pipeline.warehouse import Warehouse

EXECUTE = "dagster job execute -m definitions -j live_paper"
LAUNCH = "dagster job launch -j live_paper"
DAEMON = "dagster-daemon run"
DECISION_TIMES = 2


def argv(line: str) -> list[str]:
    """A command line as typed, with the program from this interpreter's virtual environment."""
    program, *args = line.split()
    return [str(Path(sys.executable).parent / program), *args]


def environment(tmp_path: Path, warehouse: Path, data: Path) -> dict[str, str]:
    """A temporary Dagster instance, warehouse (with the exchange's account file) and MLflow registry; the
    session bounded to two decision times by the environment, not by run config."""
    return {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        # This checkout's code, also where the virtual environment holds another checkout's (editable install).
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "CRYPTO_PIPELINE_WAREHOUSE_DIR": str(warehouse),
        "CRYPTO_PIPELINE_MLRUNS_DIR": str(tmp_path / "mlruns"),
        "CRYPTO_PIPELINE_MARKET_DATA_DIR": str(data),
        "CRYPTO_PIPELINE_LIVE_MAX_DECISIONS": str(DECISION_TIMES),
        "CRYPTO_PIPELINE_LIVE_MAX_RUNTIME_S": "120",  # a safety net: the decisions end the session
    }


def stop(process: subprocess.Popen, log: Path) -> None:
    """SIGINT to the process group (the daemon with the code server it started, or a command still
    running), SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            pytest.fail(f"{' '.join(process.args[-3:])} ignored SIGINT for 30 s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """The Dagster instance in DAGSTER_HOME as `make setup` leaves it. Its SQLite storage exists before the
    daemon and the launch open it: two processes creating it at the same moment can both stamp its schema
    (alembic: "more than one head")."""
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def journaled(warehouse: Path, run_id: str, table: str) -> pl.DataFrame:
    """The journal's rows of a run: its session id is the run id's first eight characters."""
    return Warehouse(warehouse).read(table).filter(pl.col("run_id") == run_id[:8])


@pytest.mark.slow
@pytest.mark.requires_data("binance-spot-2024")
def test_the_design_card_commands_trade_a_session_each_from_the_repository_root(
    tmp_path: Path, recorded, instance: dg.DagsterInstance
) -> None:
    data = recorded("binance-spot-2024")
    # One warehouse per command: the two sessions run side by side, each with its own exchange account.
    executed_wh, launched_wh = tmp_path / "wh-execute", tmp_path / "wh-launch"
    logs = {name: tmp_path / f"{name}.log" for name in ("daemon", "execute", "launch")}
    start = time.monotonic()
    with logs["daemon"].open("w") as daemon_log, logs["execute"].open("w") as execute_log:
        daemon = subprocess.Popen(
            argv(DAEMON),
            cwd=REPO_ROOT,
            env=environment(tmp_path, launched_wh, data),
            stdout=daemon_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        executed = subprocess.Popen(
            argv(EXECUTE),
            cwd=REPO_ROOT,
            env=environment(tmp_path, executed_wh, data),
            stdout=execute_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            launch = subprocess.run(
                argv(LAUNCH),
                cwd=REPO_ROOT,
                env=environment(tmp_path, launched_wh, data),
                capture_output=True,
                text=True,
                timeout=180,
            )
            logs["launch"].write_text(launch.stdout + launch.stderr)
            assert launch.returncode == 0, launch.stdout + launch.stderr
            assert executed.wait(timeout=240) == 0, logs["execute"].read_text()[-5000:]
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                runs = instance.get_runs(dg.RunsFilter(job_name="live_paper"))
                if len(runs) == 2 and all(run.is_finished for run in runs):
                    break
                time.sleep(1)
        finally:
            stop(executed, logs["execute"])
            stop(daemon, logs["daemon"])
    elapsed = time.monotonic() - start

    runs = instance.get_runs(dg.RunsFilter(job_name="live_paper"))
    assert len(runs) == 2 and all(run.is_finished for run in runs), (
        f"after {elapsed:.0f} s: {[(r.run_id, r.status) for r in runs]}\n"
        f"daemon log:\n{logs['daemon'].read_text()[-5000:]}"
    )
    assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}, logs["daemon"].read_text()[-5000:]
    # The executed run's id is in its terminal output; the other is the one the daemon took from the queue.
    [executed_run] = [run for run in runs if run.run_id in logs["execute"].read_text()]
    [launched_run] = [run for run in runs if run is not executed_run]
    for warehouse, run in ((executed_wh, executed_run), (launched_wh, launched_run)):
        decisions = journaled(warehouse, run.run_id, "decisions")
        # Every default symbol decided at each of the two decision times the environment allowed.
        assert decisions["time"].n_unique() == DECISION_TIMES, decisions
        assert sorted(decisions["symbol"].unique()) == sorted(DEFAULT_SYMBOLS)
        assert decisions["provider"].null_count() == 0 and decisions["valid"].all()
        # No run config: the default provider, which with an empty registry trades the rules and says so
        # in the journal's session row and in the run's tags.
        [session] = journaled(warehouse, run.run_id, "sessions").to_dicts()
        assert session["role"] == "trading" and "the rules trade" in session["note"], session
        assert "the rules trade" in instance.get_run_by_id(run.run_id).tags["crypto_pipeline/provider_note"]

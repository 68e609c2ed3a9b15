"""The monitoring and deployment files under docs/ are checked, not just written: the Grafana dashboard
and the alert rules parse and name only metrics the live registry has; the systemd units pass
`systemd-analyze verify` and pass options their commands accept; the compose file parses and what it
builds, mounts and runs exists; the services' dagster.yaml loads as a Dagster instance."""

from __future__ import annotations

import configparser
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crypto_pipeline.live.metrics import LiveMetrics

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DEPLOY = DOCS / "deploy"
VENV_BIN = Path(sys.executable).parent
INSTALL = "/opt/crypto-pipeline"
UNITS = sorted(DEPLOY.glob("*.service"))


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\blive_[a-z_]+\b", expr))


def test_the_dashboard_and_alert_rules_name_only_metrics_the_registry_has() -> None:
    known = LiveMetrics("docs").names()
    dashboard = json.loads((DOCS / "grafana" / "live.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = yaml.safe_load((DOCS / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    assert len(exprs) >= 10 and len(rules) >= 8
    assert all({"alert", "expr", "labels", "annotations"} <= set(rule) for rule in rules)
    named = set().union(*(metric_names(e) for e in exprs + [r["expr"] for r in rules]))
    assert named and named <= known, named - known
    # Every metric of the registry is on the dashboard (the info gauge aside).
    families = {m.name for m in LiveMetrics("docs").registry.collect()} - {"live_session_info"}
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in named}
    assert families <= shown, families - shown
    # The label values the rules match on are ones the code produces.
    from crypto_pipeline.live.metrics import REJECTION_REASONS

    reasons = set(re.findall(r'reason="([a-z_]+)"', (DOCS / "prometheus" / "alerts.yml").read_text()))
    assert reasons and reasons <= set(REJECTION_REASONS)


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_each_systemd_unit_verifies_and_runs_a_dagster_command_with_options_it_accepts(
    unit, tmp_path
) -> None:
    parsed = _unit(unit)
    service = parsed["Service"]
    assert service["Restart"] == "always" and parsed["Install"]["WantedBy"] == "multi-user.target"
    assert service["WorkingDirectory"] == INSTALL and "DAGSTER_HOME=" in service["Environment"]
    argv = shlex.split(service["ExecStart"])
    program = VENV_BIN / Path(argv[0]).name
    assert argv[0] == f"{INSTALL}/.venv/bin/{program.name}" and program.exists()

    verifier = shutil.which("systemd-analyze")
    if verifier is not None:
        # The unit as installed from this checkout: same directives, paths pointing here.
        local = tmp_path / unit.name
        text = unit.read_text().replace(f"{INSTALL}/.venv/bin", str(VENV_BIN)).replace(INSTALL, str(ROOT))
        local.write_text(text)
        done = subprocess.run([verifier, "verify", str(local)], capture_output=True, text=True, timeout=120)
        problems = [
            line for line in done.stderr.splitlines() if "Unknown" in line or "not executable" in line
        ]
        assert done.returncode == 0 and not problems, done.stderr

    # Each option it passes is one the command lists (the daemon's options are those of `run`). The
    # program's own click command is asked in process: a subprocess would import Dagster again.
    from importlib.metadata import entry_points

    from click.testing import CliRunner

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == program.name]
    command = importlib.import_module(script.module).cli
    subcommand = [a for a in argv[1:2] if not a.startswith("-")]
    shown = CliRunner().invoke(command, [*subcommand, "--help"])
    assert shown.exit_code == 0, shown.output
    for option in [a for a in argv[1:] if a.startswith("-")]:
        assert re.search(rf"(^|[\s,]){re.escape(option)}\b", shown.output), f"{program.name} has no {option}"
    assert (ROOT / argv[argv.index("-w") + 1]).is_file()  # the workspace it loads


def test_the_compose_file_builds_mounts_and_runs_what_exists() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"dagster-webserver", "dagster-daemon"}
    declared_volumes = set(compose["volumes"])
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        context = (DEPLOY / service["build"]["context"]).resolve()
        assert context == ROOT and (context / service["build"]["dockerfile"]).is_file()
        assert Path(service["command"][0]).name in {p.name for p in VENV_BIN.iterdir()}
        assert "workspace.yaml" in service["command"] and (ROOT / "workspace.yaml").is_file()
        env = service["environment"]
        assert env["DAGSTER_HOME"].startswith("/var/lib/crypto-pipeline/dagster")
        # Secrets pass through from the caller's environment, never written in the file.
        assert env["ALPACA_SECRET_KEY"] == "${ALPACA_SECRET_KEY:-}"
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                # Lexically, not resolved: ../shared may be a link (CI's checkout has one).
                path = Path(os.path.normpath(DEPLOY / source))
                assert path.is_relative_to(ROOT.parent), volume
                if path.is_relative_to(ROOT):
                    assert path.exists(), volume
            else:
                assert source in declared_volumes, volume
    # The Dockerfile installs with the project's own setup script.
    assert "scripts/setup_venv.sh" in (DEPLOY / "Dockerfile").read_text()
    assert (ROOT / "scripts" / "setup_venv.sh").is_file()


def test_the_services_dagster_yaml_loads_as_an_instance(tmp_path, monkeypatch) -> None:
    import dagster as dg

    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        coordinator = instance.run_coordinator
        assert type(coordinator).__name__ == "QueuedRunCoordinator"
        limits = coordinator.get_run_queue_config().tag_concurrency_limits
        assert {"key": "dagster/job_name", "value": "live_paper", "limit": 1} in limits

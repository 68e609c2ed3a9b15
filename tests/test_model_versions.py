"""`crypto-pipeline models`: every registered version side by side, each metric with its interval where its
training run logged one, blank where it logged nothing (versions trained before a metric existed)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from crypto_pipeline.cli import app
from crypto_pipeline.config import Settings
from crypto_pipeline.model_versions import COLUMNS, version_rows, with_interval
from tests.test_registry import _register

OLD = {"val_valid_json_rate": 1.0, "val_balanced_accuracy": 0.3333, "test_balanced_accuracy": 0.35}
NEW = {
    "val_valid_json_rate": 1.0,
    "val_balanced_accuracy": 0.412,
    "val_balanced_accuracy_ci_low": 0.371,
    "val_balanced_accuracy_ci_high": 0.455,
    "test_balanced_accuracy": 0.398,
    "test_balanced_accuracy_ci_low": 0.35,
    "test_balanced_accuracy_ci_high": 0.441,
    "val_macro_f1": 0.39,
    "val_macro_f1_ci_low": 0.33,
    "val_macro_f1_ci_high": 0.45,
    "tuned_minus_base_val_balanced_accuracy": 0.079,
    "tuned_minus_base_val_balanced_accuracy_ci_low": -0.02,
    "tuned_minus_base_val_balanced_accuracy_ci_high": 0.18,
    "tuned_minus_base_test_balanced_accuracy": 0.065,
    "tuned_minus_base_test_balanced_accuracy_ci_low": 0.012,
    "tuned_minus_base_test_balanced_accuracy_ci_high": 0.121,
    "base_val_balanced_accuracy": 0.333,
    "logreg_val_balanced_accuracy": 0.47,
    "val_share_buy": 0.2,
    "val_share_sell": 0.3,
    "val_share_hold": 0.5,
    "val_mean_confidence": 64.25,
    "val_distinct_reasoning_share": 0.8,
    "val_top_reasoning_share": 0.1,
}


def _version_with_metrics(settings: Settings, adapter: Path, metrics: dict[str, float], aliases=()) -> str:  # noqa: ANN001
    """A version registered as training registers it, its run carrying `metrics`."""
    from crypto_pipeline.registry import MODEL_NAME, client

    version = _register(settings, base_model="tiny", adapter=adapter, aliases=aliases)
    mc = client(settings.mlflow_tracking_uri)
    run_id = mc.get_model_version(MODEL_NAME, version).run_id
    from mlflow.entities import Metric

    mc.log_batch(run_id, metrics=[Metric(name, value, 0, 0) for name, value in metrics.items()])
    return version


def test_models_shows_every_version_with_its_intervals_side_by_side(tmp_path: Path) -> None:
    settings = Settings(mlruns_dir=tmp_path / "mlruns")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    old = _version_with_metrics(settings, adapter, OLD)
    new = _version_with_metrics(settings, adapter, NEW, aliases=("challenger",))
    assert (old, new) == ("1", "2")

    rows = {r["version"]: r for r in version_rows(settings.mlflow_tracking_uri)}
    assert rows["2"]["aliases"] == "challenger" and rows["1"]["aliases"] == ""
    assert rows["2"]["val bal. acc. [CI]"] == "0.412 [0.371, 0.455]"
    assert rows["2"]["tuned - base val bal. acc. [CI]"] == "0.079 [-0.020, 0.180]"
    assert rows["2"]["tuned - base test bal. acc. [CI]"] == "0.065 [0.012, 0.121]"
    assert rows["2"]["logreg val bal. acc. (ceiling)"] == "0.470"
    assert rows["2"]["val BUY/SELL/HOLD"] == "20%/30%/50%" and rows["2"]["val mean conf."] == "64.2"
    assert rows["2"]["val reasoning distinct / top"] == "80% / 10%"
    # The old version logged no intervals and no behaviour: its value alone, blanks elsewhere.
    assert rows["1"]["val bal. acc. [CI]"] == "0.333" and rows["1"]["test bal. acc. [CI]"] == "0.350"
    assert rows["1"]["val macro F1 [CI]"] == rows["1"]["val BUY/SELL/HOLD"] == ""
    assert rows["1"]["logreg val bal. acc. (ceiling)"] == ""

    shown = CliRunner().invoke(app, ["models"], env={"CRYPTO_PIPELINE_MLRUNS_DIR": str(settings.mlruns_dir)})
    assert shown.exit_code == 0, shown.output
    # One row per figure, one column per version: the cells of each row, left to right.
    table = {
        cells[0]: cells[1:]
        for line in shown.output.splitlines()
        if len(cells := [c.strip() for c in line.strip().split("│")[1:-1]]) == 3
    }
    assert set(COLUMNS[1:]) <= set(table)
    assert table["val bal. acc. [CI]"] == ["0.333", "0.412 [0.371, 0.455]"]
    assert table["val macro F1 [CI]"] == ["", "0.390 [0.330, 0.450]"]
    assert table["aliases"] == ["", "challenger"]


def test_an_interval_is_shown_only_when_both_ends_were_logged() -> None:
    assert with_interval({"m": 0.5, "m_ci_low": 0.4, "m_ci_high": 0.6}, "m") == "0.500 [0.400, 0.600]"
    assert with_interval({"m": 0.5, "m_ci_low": 0.4}, "m") == "0.500"
    assert with_interval({"m_ci_low": 0.4, "m_ci_high": 0.6}, "m") == ""
    assert with_interval({"m": float("nan")}, "m") == ""

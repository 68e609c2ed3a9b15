"""`crypto-pipeline backtest`: one JSON object, clear errors for bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from crypto_pipeline.cli import app

pytestmark = pytest.mark.requires_data("binance-spot-2024")
runner = CliRunner()


def test_ema_cross_prints_one_json_object() -> None:
    result = runner.invoke(
        app,
        [
            "backtest",
            "--policy",
            "ema_cross",
            "--symbols",
            "BTC/USDT",
            "--start",
            "2024-03-01",
            "--end",
            "2024-04-01",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["trades"] > 0 and summary["final_equity"] > 0
    assert {"sharpe", "max_drawdown", "fees_paid", "turnover"} <= set(summary)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "nope"], "unknown policy"),
        (["--symbols", "NOPE/USDT"], "unknown symbol"),
        (["--start", "2024-05-01", "--end", "2024-04-01"], "before end"),
        (["--start", "2030-01-01", "--end", "2030-02-01"], "no 1h bars"),
        (["--policy", "llm:987654"], "no version"),
        # The model-driven and walk-forward policies check their input before any model loads.
        (["--policy", "rules", "--symbols", "BTC/USDT,NOPE/USDT"], "unknown symbol"),
        (["--policy", "llm", "--symbols", "NOPE/USDT"], "unknown symbol"),
        (["--policy", "rules", "--start", "2030-01-01", "--end", "2030-02-01"], "no 1h bars"),
        (["--policy", "llm", "--start", "2024-04-02", "--end", "2024-04-01"], "before end"),
        (["--policy", "lgbm", "--start", "2024-05-01", "--end", "2024-04-01"], "before end"),
        (["--symbols", ""], "no symbols given"),
        (["--fast", "21", "--slow", "9"], "must be below --slow"),
        (["--timeframe", "7m"], "unknown timeframe"),
        (["--start", "notadate"], "not a date"),
    ],
)
def test_bad_input_gets_a_clear_error(args: list[str], message: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CRYPTO_PIPELINE_MLRUNS_DIR", str(tmp_path))
    monkeypatch.setenv("CRYPTO_PIPELINE_WAREHOUSE_DIR", str(tmp_path / "wh"))
    result = runner.invoke(app, ["backtest", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in result.output.replace("\n", " ")
    assert not (tmp_path / "out").exists() and not (tmp_path / "wh").exists()
    assert not (tmp_path / "mlflow.db").exists()  # not even an empty registry


def test_promote_a_missing_version_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CRYPTO_PIPELINE_MLRUNS_DIR", str(tmp_path))
    result = runner.invoke(app, ["promote", "--challenger", "7"])
    assert result.exit_code == 2
    assert "no version '7' of crypto-policy" in result.output.replace("\n", " ")
    assert not (tmp_path / "mlflow.db").exists()


def test_promote_bad_symbols_are_a_clear_error_and_record_nothing(tmp_path, monkeypatch) -> None:
    """A real registered version (sqlite MLflow), judged on a symbol that does not exist: exit 2 with
    one line, before any model loads, and no verdict on the version, no decision cache."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("crypto-policy")
    version = client.create_model_version("crypto-policy", source=str(tmp_path)).version
    client.set_registered_model_alias("crypto-policy", "challenger", version)
    monkeypatch.setenv("CRYPTO_PIPELINE_MLRUNS_DIR", str(tmp_path))
    monkeypatch.setenv("CRYPTO_PIPELINE_WAREHOUSE_DIR", str(tmp_path / "wh"))
    result = runner.invoke(app, ["promote", "--symbols", "NOPE/USDT"])
    assert result.exit_code == 2
    assert "unknown symbol(s) ['NOPE/USDT']" in result.output.replace("\n", " ")
    assert not any(k.startswith("gate.") for k in client.get_model_version("crypto-policy", version).tags)
    assert not (tmp_path / "wh").exists()
    missing = runner.invoke(app, ["promote", "--challenger", "9"])
    assert missing.exit_code == 2 and "no version '9' of crypto-policy" in missing.output.replace("\n", " ")


@pytest.mark.parametrize(
    "args",
    [
        ["backtest", "--policy", "nope"],
        ["backtest", "--symbols", "NOPE/USDT"],
        ["backtest", "--start", "2030-01-01", "--end", "2030-01-31"],
        ["backtest", "--data-dir", "/nonexistent/folder"],
        ["promote", "--symbols", "NOPE/USDT"],
    ],
)
def test_bad_input_is_refused_before_the_heavy_imports(args: list[str]) -> None:
    """Checked with polars alone: neither vectorbt, numba's kernels, MLflow nor torch is imported."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from crypto_pipeline.cli import app\n"
        f"result = CliRunner().invoke(app, {args!r})\n"
        "assert result.exit_code == 2, result.output\n"
        "heavy = sorted(m for m in ('vectorbt', 'torch', 'mlflow', 'arch', 'lightgbm') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_help_shows_the_data_window_and_cap_options() -> None:
    backtest = " ".join(runner.invoke(app, ["backtest", "--help"], env={"COLUMNS": "200"}).output.split())
    for option in ("--data-dir", "--start", "--end", "--max-decisions", "--train-days", "llm:base"):
        assert option in backtest
    assert "Last UTC day, included" in backtest and "CRYPTO_PIPELINE_MARKET_DATA_DIR" in backtest
    promote = " ".join(runner.invoke(app, ["promote", "--help"], env={"COLUMNS": "200"}).output.split())
    for option in ("--data-dir", "--start", "--end", "--symbols", "--folds", "CRYPTO_PIPELINE_START"):
        assert option in promote

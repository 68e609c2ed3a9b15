"""Research on another market and period: a data folder derived from Alpaca's BTC/USD hourly CSV of 2021
(another venue, format and regime than the 2024 Binance set the defaults use; no 4h or 1d file: both
resampled), every policy backtested on it through `--data-dir`, and `promote` judging on it: an honest
refusal with the real training cutoff, a verdict once the cutoff lies before the window."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from crypto_pipeline.cli import app
from crypto_pipeline.config import SHARED_MARKET_DATA

pytestmark = pytest.mark.requires_data("alpaca-btcusd-2021")
SOURCE = SHARED_MARKET_DATA / "alpaca-btcusd-2021" / "BTC-USD_HOUR.csv"
SPAN = ["--symbols", "BTC/USD", "--start", "2021-03-01", "--end", "2021-03-03"]
METRICS = {"final_equity", "total_return", "sharpe", "sharpe_lo", "sharpe_hi", "sortino", "max_drawdown",
           "trades", "fees_paid", "turnover", "exposure", "win_rate", "deflated_sharpe"}  # fmt: skip
DECISIONS = {"decisions", "buy_share", "sell_share", "hold_share", "mean_confidence", "invalid_rate"}
runner = CliRunner()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Alpaca's hourly BTC/USD CSV cut to 2021-01-15..2021-03-10, alone in its folder."""
    out = tmp_path_factory.mktemp("alpaca-2021")
    raw = pl.read_csv(SOURCE, schema_overrides={"timestamp": pl.Utf8})
    day = pl.col("timestamp").str.slice(0, 10)
    raw.filter((day >= "2021-01-15") & (day <= "2021-03-10")).write_csv(out / "BTC-USD_HOUR.csv")
    return out


def _run(args: list[str]) -> dict:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("policy", ["buy_hold", "ema_cross", "rsi", "rules", "lgbm"])
def test_every_policy_runs_on_another_market_in_one_report_format(
    policy: str, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRYPTO_PIPELINE_WAREHOUSE_DIR", str(tmp_path / "wh"))
    out = _run(["backtest", "--policy", policy, "--data-dir", str(folder), *SPAN, "--train-days", "30"])
    assert out["policy"] == policy and out["data_dir"] == str(folder)
    # Days include both ends: 2021-03-01..03 is three days, the same span for every policy.
    assert (out["test_start"], out["test_end"]) == ("2021-03-01T00:00:00+00:00", "2021-03-04T00:00:00+00:00")
    assert METRICS <= set(out)
    assert not any(k.startswith("llm_") for k in out)  # labels follow the policy
    if policy == "rules":
        assert DECISIONS <= set(out) and out["decisions"] == 18  # every 4 h over 3 days
        assert out["buy_share"] + out["sell_share"] + out["hold_share"] == pytest.approx(1.0)
    if policy == "lgbm":  # its training span is explicit, before the test span
        assert (out["train_start"], out["train_end"]) == (
            "2021-01-28T00:00:00+00:00",
            "2021-02-27T00:00:00+00:00",
        )
    report = Path(out["report"])
    assert report.parent == tmp_path / "wh" / "reports" / "backtest" and report.exists()


def test_errors_name_the_folder_the_symbols_and_the_range_it_holds(
    folder: Path, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("CRYPTO_PIPELINE_WAREHOUSE_DIR", str(tmp_path / "wh"))
    args = [
        "backtest",
        "--data-dir",
        str(folder),
        "--symbols",
        "BTC/USD",
        "--start",
        "2022-01-01",
        "--end",
        "2022-01-31",
    ]
    result = runner.invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and folder.name in text.replace(" ", "")
    assert "['BTC/USD']" in text and "2021-01-15 00:00" in text and "2021-03-10 23:00" in text
    unknown = runner.invoke(app, ["backtest", "--data-dir", str(folder), "--symbols", "ETH/USD"])
    assert unknown.exit_code == 2 and "unknown symbol(s) ['ETH/USD']" in " ".join(unknown.output.split())
    short = runner.invoke(
        app, ["backtest", "--policy", "lgbm", "--data-dir", str(folder), *SPAN, "--train-days", "4"]
    )
    assert short.exit_code == 2 and "too few for LightGBM" in " ".join(short.output.split())
    early = runner.invoke(app, ["backtest", "--policy", "lgbm", "--data-dir", str(folder), "--symbols", "BTC/USD",
                                "--start", "2021-01-16", "--end", "2021-01-20"])  # fmt: skip
    assert early.exit_code == 2 and "no 1h bars to train on" in " ".join(early.output.split())


def test_the_registered_llm_decides_on_another_market_and_keeps_its_decisions(
    registered_challenger,
    folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    mlruns, registered = registered_challenger
    monkeypatch.setenv("CRYPTO_PIPELINE_MLRUNS_DIR", str(shutil.copytree(mlruns, tmp_path / "mlruns")))
    monkeypatch.setenv("CRYPTO_PIPELINE_WAREHOUSE_DIR", str(tmp_path / "wh"))
    args = ["backtest", "--policy", "llm", "--data-dir", str(folder), *SPAN, "--decision-every", "24"]
    out = _run([*args, "--max-decisions", "2"])
    # `llm` is the champion, else the newest challenger, and it says which.
    assert out["policy"] == f"llm:{registered.version}" and "falling back" in out["model"]
    assert out["decisions"] == 2 and "--max-decisions 2" in out["capped"]
    assert DECISIONS <= set(out) and METRICS <= set(out)
    cached = pl.read_parquet(tmp_path / "wh" / "decision_cache" / "data.parquet")
    assert cached.height == 2 and set(cached["model_version"]) == {f"crypto-policy:{registered.version}"}


def test_promote_on_another_market_refuses_honestly_or_gives_a_verdict(
    registered_challenger,
    folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    from crypto_pipeline.config import Settings
    from crypto_pipeline.registry import client

    mlruns, registered = registered_challenger
    mlruns = shutil.copytree(mlruns, tmp_path / "mlruns")
    monkeypatch.setenv("CRYPTO_PIPELINE_MLRUNS_DIR", str(mlruns))
    monkeypatch.setenv("CRYPTO_PIPELINE_WAREHOUSE_DIR", str(tmp_path / "wh"))
    args = ["promote", "--data-dir", str(folder), "--symbols", "BTC/USD", "--start", "2021-02-01"]
    args += [
        "--end",
        "2021-03-07",
        "--folds",
        "1",
        "--test-days",
        "3",
        "--decision-every",
        "24",
        "--audit-samples",
        "1",
    ]
    # Trained on 2024 data: no fold of 2021 lies after its cutoff. A refusal with its reason and dates.
    refused = _run(args)
    assert refused["promoted"] is False and refused["refused"] is True
    assert "training cutoff" in refused["reasons"][0] and "2021-03-05" in refused["reasons"][0]
    # The same version with a cutoff before the window is judged there: a verdict, every reason.
    mlflow = client(Settings(mlruns_dir=mlruns).mlflow_tracking_uri)
    mlflow.set_model_version_tag(
        "crypto-policy", registered.version, "training_cutoff", "2021-01-20T00:00:00+00:00"
    )
    judged = _run(args)
    assert isinstance(judged["promoted"], bool) and "refused" not in judged
    text = "\n".join(judged["reasons"])
    assert "vs best baseline" in text and "audit truncation:" in text
    assert {row["policy"] for row in judged["table"]} >= {
        f"llm:{registered.version}",
        "rules",
        "buy_hold",
        "lgbm",
    }


@pytest.mark.requires_data("binance-spot-2021")
def test_a_fired_kill_switch_is_said_to_end_the_run_for_that_policy() -> None:
    from dataclasses import replace

    from crypto_pipeline.backtest.run import backtest, config_from_options
    from crypto_pipeline.risk import RiskConfig

    config = config_from_options(
        symbols=("BTC/USDT",),
        start="2021-05-10",
        end="2021-05-20",
        data_dir=SHARED_MARKET_DATA / "binance-spot-2021",
    )
    summary, _ = backtest("rules", replace(config, risk=RiskConfig(max_drawdown_pct=1.0)))
    assert "the run is over for this policy" in summary["kill_switch"]

"""Policy backtests through the risk engine, the decision cache, and the leakage audits, on real bars."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

from crypto_pipeline.backtest.audits import LeakyPolicy, anonymized_audit, lag_audit, truncation_audit
from crypto_pipeline.backtest.cache import DecisionCache
from crypto_pipeline.backtest.engine import load_bars
from crypto_pipeline.backtest.walkforward import (
    MarketData,
    WalkForwardConfig,
    run_provider_fold,
    walk_forward,
)
from crypto_pipeline.config import SHARED_MARKET_DATA
from crypto_pipeline.llm.rule_based import RuleBased
from crypto_pipeline.risk import RiskConfig
from crypto_pipeline.trading import OrderSide

DATA = SHARED_MARKET_DATA / "binance-spot-2024"
pytestmark = pytest.mark.requires_data("binance-spot-2024")

CONFIG = WalkForwardConfig(
    symbols=("BTC/USDT", "ETH/USDT", "SOL/USDT"),
    start="2024-01-01",
    end="2024-04-01",
    n_folds=2,
    test_days=10,
    decision_every_hours=2,
    risk=RiskConfig(min_confidence=50),
)


@pytest.fixture(scope="module")
def data() -> MarketData:
    return MarketData.load(CONFIG)


def test_rule_based_trades_through_the_risk_engine_and_vectorbt_reproduces_the_account(
    data: MarketData,
) -> None:
    fold = CONFIG.folds()[-1]
    result = run_provider_fold("rules", RuleBased(), data, fold, CONFIG)
    run = result.run
    assert run is not None and run.fills, "RuleBased should trade in 10 days of three pairs"
    # Every order came from an approved decision; every rejection says why.
    assert sum(o.approved for o in run.outcomes) >= len(
        {(run.decided_at[f.order_id], f.symbol) for f in run.fills}
    )
    assert all(o.reason for o in run.outcomes if not o.approved)
    opens = data.bars.to_pandas().set_index(["symbol", "timestamp"])["open"]
    for fill in run.fills:
        # Decided on the close of the bar before `at`, filled at the open of the bar starting at `at`,
        # at a worse price than the open by the slippage.
        assert fill.at == run.decided_at[fill.order_id]
        open_price = opens[(fill.symbol, pd.Timestamp(fill.at))]
        assert (fill.price >= open_price) if fill.side == OrderSide.BUY else (fill.price <= open_price)
    # The event loop's own account and vectorbt's replay of its fills agree.
    assert float(run.equity.iloc[-1]) == pytest.approx(run.final_equity, rel=1e-9)
    # Exposure never exceeded the per-symbol cap at a fill (fills at the open, cap on the last close).
    assert result.metrics["exposure"] <= CONFIG.risk.max_total_exposure_pct / 100 + 0.05


def test_lagged_fills_come_one_bar_later(data: MarketData) -> None:
    from crypto_pipeline.backtest.engine import decision_times, run_policy

    fold = CONFIG.folds()[-1]
    bars = data.bars.filter(pl.col("timestamp") >= fold.test_start - timedelta(days=2))
    index = pd.DatetimeIndex(sorted(bars["timestamp"].unique().to_list()))
    times = decision_times(index, timedelta(hours=2), fold.test_start, fold.test_end)
    states = data.states(CONFIG, times).filter(pl.col("symbol") == "BTC/USDT")
    lagged = run_policy(RuleBased(), bars, states, lag_bars=1, risk=None)
    assert lagged.fills
    assert all(f.at == lagged.decided_at[f.order_id] + timedelta(hours=1) for f in lagged.fills)


def test_a_repeated_backtest_is_served_from_the_decision_cache(data: MarketData, tmp_path: Path) -> None:
    from crypto_pipeline.warehouse import Warehouse

    path = tmp_path / "decision_cache" / "data.parquet"
    folds = CONFIG.folds()[-1:]
    first = DecisionCache(Warehouse(tmp_path))
    a = walk_forward(
        CONFIG, signal_policies=(), providers={"rules": RuleBased()}, cache=first, folds=folds, data=data
    )
    assert first.misses > 0 and path.exists()
    stored = pl.read_parquet(path)
    assert stored.height == first.misses and stored["provider"].unique().to_list() == ["rule-based"]
    second = DecisionCache(Warehouse(tmp_path))
    b = walk_forward(
        CONFIG, signal_policies=(), providers={"rules": RuleBased()}, cache=second, folds=folds, data=data
    )
    assert second.misses == 0 and second.hits == first.misses
    assert a.results[0].metrics == b.results[0].metrics


def _bars_by_tf() -> dict[str, pl.DataFrame]:
    return {tf: load_bars(["BTC/USDT"], tf, "2024-01-01", "2024-03-01", DATA) for tf in ("1h", "4h", "1d")}


SAMPLES = [("BTC/USDT", datetime(2024, 2, d, h, tzinfo=UTC)) for d in (5, 12, 20) for h in (3, 15)]


def test_rule_based_passes_truncation_and_shuffle_future_audits() -> None:
    bars = _bars_by_tf()
    for shuffle in (False, True):
        result = truncation_audit(lambda _: RuleBased(), bars, SAMPLES, shuffle_future=shuffle)
        assert result.passed, result.detail


def test_an_intentionally_leaky_policy_is_caught() -> None:
    bars = _bars_by_tf()
    for shuffle in (False, True):
        result = truncation_audit(lambda b: LeakyPolicy(b["1h"]), bars, SAMPLES, shuffle_future=shuffle)
        assert not result.passed, result.detail
        assert result.figures["mismatches"] > 0


def test_anonymized_and_lag_audits() -> None:
    from crypto_pipeline.backtest.audits import _states

    bars = _bars_by_tf()
    states = [_states(bars, s, at) for s, at in SAMPLES]
    result = anonymized_audit(RuleBased(), states)
    assert result.passed and result.figures["disagreement"] == 0.0  # rules never read symbol or price level
    assert lag_audit(1.5, 1.2).passed
    assert not lag_audit(1.5, -0.3).passed
    assert lag_audit(-0.5, -2.0).passed


def test_lgbm_learns_the_fine_tuned_llms_labels_on_the_walk_forward_fold(data: MarketData) -> None:
    """The baseline's labels are `training.labels`' (the SFT dataset's horizon, volatility scaling and
    class shares), fitted on the fold's training rows only, and no training label reads past the
    fold's training end."""
    from crypto_pipeline.backtest.baselines import lgbm_long, lgbm_training_set
    from crypto_pipeline.training.dataset import DatasetConfig
    from crypto_pipeline.training.labels import forward_returns

    fold = CONFIG.folds()[-1]
    bars = data.bars.filter(pl.col("timestamp") < fold.test_end)
    train, test, columns = lgbm_training_set(bars, fold, "1h")
    labels = DatasetConfig()
    assert train["label_end"].max() <= fold.train_end < fold.test_start
    assert ((train["label_end"] - train["at"]) == labels.horizon).all()
    assert test["timestamp"].min() >= fold.test_start and "forward_return" not in columns
    # The same forward return as the SFT dataset's for the same decision points.
    again = forward_returns(bars, train.select("symbol", "at"), labels.horizon, "1h")
    assert again["forward_return"].to_list() == train["forward_return"].to_list()
    # Thresholds fitted on these rows: each class holds about its share (1/3) of the training labels.
    shares = train["action"].value_counts(normalize=True).sort("action")
    assert shares["action"].to_list() == ["BUY", "HOLD", "SELL"]
    assert all(abs(s - 1 / 3) < 0.01 for s in shares["proportion"])
    long = lgbm_long(bars, fold, "1h")
    assert long.index.min() >= fold.test_start and long.shape[1] == 3

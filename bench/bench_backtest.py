"""Backtest benchmarks: an EMA-cross parameter grid over the 24 pairs at 5 minutes (1.62M bars) in
vectorbt against backtesting.py on the same strategy in the same run (target: >= 100x per bar), and the
risk engine's decisions/s. `quick` uses 2 pairs and a small grid."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import TABLE_HEADER, BenchResult  # noqa: E402

from crypto_pipeline.backtest.engine import backtest_long_signals, ema, load_bars, wide  # noqa: E402
from crypto_pipeline.config import SHARED_MARKET_DATA  # noqa: E402

DATA = SHARED_MARKET_DATA / "binance-spot-2024"


def _grid_long(close: pd.DataFrame, pairs: list[tuple[int, int]]) -> pd.DataFrame:
    frames = {}
    emas = {span: ema(close, span) for span in {s for p in pairs for s in p}}
    for fast, slow in pairs:
        frames[(fast, slow)] = emas[fast] > emas[slow]
    out = pd.concat(frames, axis=1, names=["fast", "slow"])
    return out


def _backtesting_py_bars_per_s(close_one: pd.DataFrame, open_one: pd.DataFrame, n_bars: int) -> float:
    from backtesting import Strategy
    from backtesting.lib import FractionalBacktest

    frame = pd.DataFrame(
        {
            "Open": open_one.iloc[:n_bars, 0],
            "High": close_one.iloc[:n_bars, 0],
            "Low": close_one.iloc[:n_bars, 0],
            "Close": close_one.iloc[:n_bars, 0],
            "Volume": 1.0,
        }
    ).dropna()
    frame["High"] = frame[["Open", "Close"]].max(axis=1)
    frame["Low"] = frame[["Open", "Close"]].min(axis=1)

    class EmaCross(Strategy):
        def init(self) -> None:
            closes = pd.DataFrame(pd.Series(self.data.Close))
            self.fast = self.I(lambda: ema(closes, 9).iloc[:, 0].to_numpy())
            self.slow = self.I(lambda: ema(closes, 21).iloc[:, 0].to_numpy())

        def next(self) -> None:
            if self.fast[-1] > self.slow[-1]:
                if not self.position:
                    self.buy()
            elif self.position:
                self.position.close()

    started = time.perf_counter()
    FractionalBacktest(frame, EmaCross, cash=10_000, commission=0.0025, fractional_unit=1e-9).run()
    return len(frame) / (time.perf_counter() - started)


def _risk_decisions_per_s(n: int) -> float:
    from crypto_pipeline.llm.decision import Action, TradeDecision
    from crypto_pipeline.risk import RiskEngine
    from crypto_pipeline.trading import Account

    engine = RiskEngine()
    account = Account(cash=10_000, equity=10_000)
    rng = np.random.default_rng(0)
    decisions = [
        TradeDecision(action=Action.BUY, confidence=float(c), position_size_pct=10, symbol="BTC/USDT")
        for c in rng.uniform(0, 100, n)
    ]
    now = datetime(2024, 1, 1, tzinfo=UTC)
    started = time.perf_counter()
    for d in decisions:
        engine.evaluate(d, account, 40_000.0, now=now)
    return n / (time.perf_counter() - started)


def run(quick: bool = False) -> list[BenchResult]:
    symbols_all = sorted(set(pd.read_parquet(DATA / "bars_5m.parquet", columns=["symbol"])["symbol"]))
    symbols = symbols_all[:2] if quick else symbols_all
    end = "2024-02-01" if quick else "2024-09-08"
    bars = load_bars(symbols, "5m", "2024-01-01", end, DATA)
    open_, close = wide(bars, "open"), wide(bars, "close")
    pairs = [(f, s) for f in (5, 9, 13) for s in (21, 34, 55)] if not quick else [(9, 21), (13, 34)]
    backtest_long_signals(open_.iloc[:500], close.iloc[:500], close.iloc[:500] > 0)  # compile numba first
    started = time.perf_counter()
    long = _grid_long(close, pairs)
    pf = backtest_long_signals(open_, close, long)
    pf.value()
    elapsed = time.perf_counter() - started
    evaluations = bars.height * len(pairs)
    ours = evaluations / elapsed
    reference = _backtesting_py_bars_per_s(
        close[[symbols[0]]], open_[[symbols[0]]], 20_000 if quick else 100_000
    )
    return [
        BenchResult(
            f"ema_cross grid {len(pairs)} params x {bars.height:,} 5m bars ({len(symbols)} pairs), vectorbt",
            ours,
            "bar-evals/s",
            "backtesting.py, same strategy, one pair",
            reference,
            ">= 100x",
        ),
        BenchResult(
            "risk engine",
            _risk_decisions_per_s(2_000 if quick else 20_000),
            "decisions/s",
            "none",
            0.0,
            "report",
        ),
    ]


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print(TABLE_HEADER)
    for result in run(quick):
        print(result.row())

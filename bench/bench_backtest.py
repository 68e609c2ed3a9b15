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

import vectorbt as vbt  # noqa: E402
from _common import TABLE_HEADER, BenchResult  # noqa: E402

from crypto_pipeline.backtest.engine import DEFAULT_FEE_BPS, INIT_CASH, ema, load_bars, wide  # noqa: E402
from crypto_pipeline.config import SHARED_MARKET_DATA  # noqa: E402

DATA = SHARED_MARKET_DATA / "binance-spot-2024"


def _grid_portfolio(open_: pd.DataFrame, close: pd.DataFrame, windows: list[int]) -> vbt.Portfolio:
    """Every (fast, slow) pair of `windows` on every pair in ONE `Portfolio.from_signals` call:
    `vbt.MA.run_combs` computes each EMA once (alpha 2/(span+1), as `engine.ema`, NaN during the first
    `span - 1` bars) and lays the combinations out over the symbols; long while fast > slow at a close,
    filled at the next open, 25 bps, no slippage, 10,000 per pair and parameter set. The comparison
    and the shift are done on the raw arrays: pandas on 360 wide columns cost more than the simulation."""
    closes = close.ffill()
    fast, slow = vbt.MA.run_combs(closes, windows, ewm=True, r=2, short_names=["fast", "slow"])
    long = fast.ma.to_numpy() > slow.ma.to_numpy()  # the state at each close, (fast, slow, symbol) columns
    held = np.zeros(long.shape, dtype=bool)
    held[1:] = long[:-1]  # the position during bar t+1 is the signal at t
    # The grid's columns repeat the symbols in order: broadcast prices by column position.
    reps = long.shape[1] // close.shape[1]
    return vbt.Portfolio.from_signals(
        np.tile(closes.to_numpy(), reps),
        entries=held,
        exits=~held,
        price=np.tile(open_.fillna(closes).to_numpy(), reps),
        fees=DEFAULT_FEE_BPS / 10_000,
        init_cash=INIT_CASH,
        direction="longonly",
        use_stops=False,
        freq="5min",
        wrapper_kwargs={"columns": fast.wrapper.columns},
    )


def _backtesting_py_bars_per_s(
    close_one: pd.DataFrame, open_one: pd.DataFrame, n_bars: int
) -> tuple[float, int]:
    """backtesting.py's bars/s on up to `n_bars` bars of one pair, and how many bars it ran."""
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
    return len(frame) / (time.perf_counter() - started), len(frame)


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
    symbols = ["BTC/USDT", "ETH/USDT"] if quick else symbols_all
    end = "2024-02-01" if quick else "2024-09-08"
    bars = load_bars(symbols, "5m", "2024-01-01", end, DATA)
    open_, close = wide(bars, "open"), wide(bars, "close")
    windows = [5, 9, 13, 21, 34, 55] if not quick else [9, 21, 34]
    n_params = len(windows) * (len(windows) - 1) // 2
    for _ in range(2):  # compile numba (and warm its caches) on a slice first
        _grid_portfolio(open_.iloc[:500], close.iloc[:500], windows[:3]).final_value()
    started = time.perf_counter()
    pf = _grid_portfolio(open_, close, windows)
    final = pf.final_value()
    elapsed = time.perf_counter() - started
    assert final.shape == (n_params * len(symbols),) and np.isfinite(final.to_numpy()).all()
    evaluations = bars.height * n_params  # real bars only (the wide frame's gaps are not counted)
    ours = evaluations / elapsed
    sample = 20_000 if quick else 100_000
    ref_pair = "BTC/USDT" if "BTC/USDT" in symbols else symbols[0]
    reference, sample = _backtesting_py_bars_per_s(close[[ref_pair]], open_[[ref_pair]], sample)
    print(
        f"# vectorbt: {n_params} (fast, slow) pairs x {len(symbols)} pairs x {bars.height:,} bars in "
        f"{elapsed:.2f} s (EMAs, signals, one from_signals call, final values); backtesting.py: "
        f"{sample:,} bars of {ref_pair}, one parameter set; ratio {ours / reference:.0f}x"
    )
    return [
        BenchResult(
            f"ema_cross grid {n_params} params x {bars.height:,} 5m bars ({len(symbols)} pairs), vectorbt",
            ours,
            "bar-evals/s",
            f"backtesting.py, same strategy, {sample:,} bars of one pair",
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

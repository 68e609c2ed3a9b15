"""Backtest benchmarks: an EMA-cross parameter grid over the 24 pairs at 5 minutes (1.62M bars) against
backtesting.py on the same strategy in the same run (target: >= 100x per bar), and the risk engine's
decisions/s. `quick` uses 2 pairs and a small grid.

The grid runs through `backtest.grid.ema_cross_grid` (each EMA once per span, one numba pass for every
(fast, slow, symbol) column; tested equal to vectorbt's `from_signals`, column by column). vectorbt's
general `from_signals` on the same grid is shown too, on 4 pairs: it builds order records and value
series for every column, which costs ~100x more than the strategy. A bar-evaluation is one real bar
under one parameter set, for both engines; backtesting.py runs one parameter set on one pair."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vectorbt as vbt  # noqa: E402
from _common import TABLE_HEADER, BenchResult, best_of  # noqa: E402

from crypto_pipeline.backtest.engine import (  # noqa: E402
    backtest_long_signals,
    ema,
    ema_cross_long,
    load_bars,
    wide,
)
from crypto_pipeline.backtest.grid import ema_cross_grid  # noqa: E402
from crypto_pipeline.config import SHARED_MARKET_DATA  # noqa: E402

DATA = SHARED_MARKET_DATA / "binance-spot-2024"


def _grid_portfolio(open_: pd.DataFrame, close: pd.DataFrame, pairs: list[tuple[int, int]]) -> vbt.Portfolio:
    """The same grid as ONE `Portfolio.from_signals` call (columns = (fast, slow, symbol)) through
    `engine.backtest_long_signals`: vectorbt's full simulation (order records, value series), shown
    beside the grid kernel so that the cost of the general engine stays visible."""
    longs = {(f, s): ema_cross_long(close, f, s) for f, s in pairs}
    long = pd.concat(longs, axis=1, names=["fast", "slow"])
    return backtest_long_signals(open_, close, long)


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

    elapsed = best_of(
        lambda: FractionalBacktest(
            frame, EmaCross, cash=10_000, commission=0.0025, fractional_unit=1e-9
        ).run()
    )
    return len(frame) / elapsed, len(frame)


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


def llm_walk_forward_wall_s(warehouse: Path) -> dict[str, float]:
    """The default LLM walk-forward (`walkforward.LLM_WALK_FORWARD` on the default folds, as
    `llm_backtests` runs it: every fold at once, one model call for every fold's states, with the three
    leakage audits; without the gate's rivals) on the embedded SmolLM2 base model, timed cold (an empty
    decision cache in `warehouse`, the model loaded inside the timing) and again from the cache (a new
    process would do the same: the cache is read back from the warehouse)."""
    from crypto_pipeline.backtest.cache import DecisionCache
    from crypto_pipeline.backtest.walkforward import (
        LLM_WALK_FORWARD,
        MarketData,
        WalkForwardConfig,
        walk_forward,
    )
    from crypto_pipeline.registry import ProviderOptions, make_provider
    from crypto_pipeline.warehouse import Warehouse

    config = LLM_WALK_FORWARD.config(WalkForwardConfig(data_dir=DATA))
    folds = LLM_WALK_FORWARD.folds(config.folds())
    batch = max(ProviderOptions().batch_size, len(folds) * len(config.symbols))
    out: dict[str, float] = {}
    for label in ("cold", "cached"):
        started = time.perf_counter()
        cpu = time.process_time()
        cache = DecisionCache(Warehouse(warehouse))
        provider = make_provider("llm", options=ProviderOptions(batch_size=batch)).provider
        report = walk_forward(
            config,
            signal_policies=(),
            providers={"llm": provider},
            cache=cache,
            folds=folds,
            data=MarketData.load(config),
            audited=("llm",),
            audit_samples=LLM_WALK_FORWARD.audit_samples,
        )
        out[f"{label}_s"] = time.perf_counter() - started
        out[f"{label}_cpu_s"] = time.process_time() - cpu
        out[f"{label}_misses"] = float(cache.misses)
        out[f"{label}_hits"] = float(cache.hits)
        out["decisions"] = float(sum(r.llm.get("decisions", 0) for r in report.results))
        out["folds"] = float(len(folds))
        print(f"# {label}: {out[f'{label}_s']:.0f} s, {cache.misses} model decisions", flush=True)
    return out


def _load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def run(quick: bool = False) -> list[BenchResult]:
    symbols_all = sorted(set(pd.read_parquet(DATA / "bars_5m.parquet", columns=["symbol"])["symbol"]))
    symbols = ["BTC/USDT", "ETH/USDT"] if quick else symbols_all
    end = "2024-02-01" if quick else "2024-09-08"
    bars = load_bars(symbols, "5m", "2024-01-01", end, DATA)
    open_, close = wide(bars, "open"), wide(bars, "close")
    windows = [5, 9, 13, 21, 34, 55] if not quick else [9, 21, 34]
    pairs = [(f, s) for i, f in enumerate(windows) for s in windows[i + 1 :]]
    ema_cross_grid(open_.iloc[:500], close.iloc[:500], pairs)  # compile (or load) the numba kernel
    # Timed: every EMA (once per span, all symbols), the signals, the simulation, the final equities.
    grid = ema_cross_grid(open_, close, pairs)
    assert len(grid) == len(pairs) * len(symbols) and np.isfinite(grid["final_equity"]).all()
    elapsed = best_of(lambda: ema_cross_grid(open_, close, pairs), repeat=3)
    # A bar-evaluation is one real bar under one parameter set (the wide frame's gaps are not counted),
    # so backtesting.py's bars/s with its one parameter set is in the same unit.
    evaluations = bars.height * len(pairs)
    ours = evaluations / elapsed

    # vectorbt's general from_signals on the same grid, on a few pairs (its cost grows with the columns).
    sub = symbols[:2] if quick else ["BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT"]
    sub_bars = bars.filter(pl.col("symbol").is_in(sub)).height
    _grid_portfolio(open_[sub].iloc[:500], close[sub].iloc[:500], pairs).final_value()  # compile
    vbt_s = best_of(lambda: _grid_portfolio(open_[sub], close[sub], pairs).final_value(), repeat=1)
    vbt_rate = sub_bars * len(pairs) / vbt_s

    sample = 20_000 if quick else 100_000
    ref_pair = "BTC/USDT" if "BTC/USDT" in symbols else symbols[0]
    reference, sample = _backtesting_py_bars_per_s(close[[ref_pair]], open_[[ref_pair]], sample)
    load = _load_average()
    print(
        f"# grid kernel: {len(pairs)} (fast, slow) pairs x {len(symbols)} pairs x {bars.height:,} bars "
        f"in {elapsed:.3f} s (best of 3; EMAs, signals, simulation, final equities); vectorbt "
        f"from_signals on {len(sub)} pairs: {vbt_s:.1f} s; backtesting.py: {sample:,} bars of {ref_pair}, "
        f"one parameter set (best of 3); ratio {ours / reference:.0f}x; {load}"
    )
    return [
        BenchResult(
            f"ema_cross grid {len(pairs)} params x {bars.height:,} 5m bars ({len(symbols)} pairs), "
            "grid kernel (= vectorbt from_signals, tested)",
            ours,
            "bar-evals/s",
            f"backtesting.py, same strategy, {sample:,} bars of one pair",
            reference,
            ">= 100x",
            note=load,
        ),
        BenchResult(
            f"ema_cross grid {len(pairs)} params x {sub_bars:,} 5m bars ({len(sub)} pairs), "
            "vectorbt from_signals (one call)",
            vbt_rate,
            "bar-evals/s",
            f"backtesting.py, same strategy, {sample:,} bars of one pair",
            reference,
            "report",
            note=load,
        ),
        BenchResult(
            "risk engine",
            _risk_decisions_per_s(2_000 if quick else 20_000),
            "decisions/s",
            "none",
            0.0,
            "report",
        ),
        # BENCH_SKIP_LLM_WALK_FORWARD=1: without the LLM walk-forward's row (up to 10 minutes on 2 cores).
        *([] if quick or os.environ.get("BENCH_SKIP_LLM_WALK_FORWARD") else [_llm_row()]),
    ]


def _llm_row() -> BenchResult:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        timed = llm_walk_forward_wall_s(Path(tmp))
    return BenchResult(
        f"default LLM walk-forward, cold ({timed['decisions']:.0f} SmolLM2 decisions and the audits, "
        f"{timed['folds']:.0f} folds at once)",
        timed["cold_s"],
        "s",
        "the same from the decision cache",
        timed["cached_s"],
        "<= 600 s cold on 2 cores",
        higher_is_better=False,
        note=_load_average(),
    )


if __name__ == "__main__":
    if "--llm-only" in sys.argv:  # the LLM walk-forward's timing alone (minutes)
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            print(llm_walk_forward_wall_s(Path(tmp)), _load_average())
        sys.exit(0)
    quick = "--quick" in sys.argv
    print(TABLE_HEADER)
    for result in run(quick):
        print(result.row())

"""Appending one day vs rebuilding: the warehouse holds the 2024 5m set (24 symbols) with its bars.

Ours: `ingest_raw` + `build_bars` (5m base, 15m/1h/4h/1d) for one new day, 2024-09-06, on a warehouse
that already holds 2024-01-01..2024-09-05. Reference, same run: the full rebuild of 2024-01-01..2024-09-06
into an empty warehouse with the same two calls. Lower is better; a day is 1/250 of the data, so the
target allows fixed costs worth ~10 days (source scan, a day of context on each side, file opens).
`quick` uses January, appending February 1st.

Run: .venv/bin/python bench/bench_append.py [--quick]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import BenchResult, print_table  # noqa: E402
from crypto_pipeline.config import SHARED_MARKET_DATA  # noqa: E402
from crypto_pipeline.ingest import build_bars, ingest_raw  # noqa: E402
from crypto_pipeline.market.sources import RecordedSource  # noqa: E402
from crypto_pipeline.market.timeframes import Timeframe  # noqa: E402
from crypto_pipeline.warehouse import TABLES, Warehouse  # noqa: E402

DATA_DIR = SHARED_MARKET_DATA / "binance-spot-2024"
TARGETS = ["15m", "1h", "4h", "1d"]


def _load(source: RecordedSource, root: Path, symbols: list[str], first: date, last: date) -> int:
    """ingest + build [first, last] into the warehouse at root; returns the partitions written."""
    wh = Warehouse(root)
    raw = ingest_raw(source, wh, symbols, "5m", first, last, progress=False)
    built = build_bars(wh, symbols, "5m", TARGETS, first, last, progress=False)
    return raw.partitions_written + built.partitions_written


def _drop_day(root: Path, day: date) -> None:
    for table in TABLES:
        for partition in (root / table).glob(f"timeframe=*/date={day.isoformat()}"):
            shutil.rmtree(partition)


def run(quick: bool = False) -> list[BenchResult]:
    source = RecordedSource(DATA_DIR)
    symbols = source.symbols(Timeframe.M5)
    first, new_day = (date(2024, 1, 1), date(2024, 2, 1)) if quick else (date(2024, 1, 1), date(2024, 9, 6))
    repeat = 1 if quick else 2
    scratch = Path(tempfile.mkdtemp(prefix="bench_append_"))
    try:
        held = scratch / "held"
        _load(source, held, symbols, first, new_day - timedelta(days=1))
        rebuild_s = append_s = float("inf")
        appended = 0
        for _ in range(repeat):
            rebuilt = scratch / "rebuilt"
            shutil.rmtree(rebuilt, ignore_errors=True)
            t0 = time.perf_counter()
            _load(source, rebuilt, symbols, first, new_day)
            rebuild_s = min(rebuild_s, time.perf_counter() - t0)

            _drop_day(held, new_day)
            t0 = time.perf_counter()
            appended = _load(source, held, symbols, new_day, new_day)
            append_s = min(append_s, time.perf_counter() - t0)
        days = (new_day - first).days + 1
        return [
            BenchResult(
                name=f"append one day ({len(symbols)} symbols, 5m + 4 resampled) to {days - 1} stored days",
                figure=append_s * 1000,
                unit="ms",
                reference_name=f"full rebuild of {days} days",
                reference=rebuild_s * 1000,
                # A day is 1/days of the work; allow fixed costs worth ~10 days.
                target=f"<= {10 / days:.2f}x reference (10 days' share of {days})",
                higher_is_better=False,
                note=f"append wrote {appended} partitions (raw + 5 timeframes); best of {repeat}",
            )
        ]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    print_table(run(quick="--quick" in sys.argv))

"""Ingestion throughput: the 2024 5m set (1.62M bars, 24 symbols) into a fresh warehouse.

Ours: `ingest_raw` from the recorded Parquet file into `raw_bars` (fetch per symbol, screen, split
into 250 day partitions, atomic writes). Reference, same run: DuckDB's own `read_parquet` -> `COPY ...
TO` one Parquet file, i.e. the same rows read and written with no partitioning, no checks.
Target: at least half the reference's rows/s. `quick` ingests January only.

Run: .venv/bin/python bench/bench_ingest.py [--quick]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb  # noqa: E402

from bench._common import BenchResult, print_table  # noqa: E402
from crypto_pipeline.config import SHARED_MARKET_DATA  # noqa: E402
from crypto_pipeline.ingest import IngestReport, ingest_raw  # noqa: E402
from crypto_pipeline.market.sources import RecordedSource  # noqa: E402
from crypto_pipeline.market.timeframes import Timeframe  # noqa: E402
from crypto_pipeline.warehouse import Warehouse  # noqa: E402

DATA_DIR = SHARED_MARKET_DATA / "binance-spot-2024"
FILE = DATA_DIR / "bars_5m.parquet"
REPEAT = 5


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def run(quick: bool = False) -> list[BenchResult]:
    source = RecordedSource(DATA_DIR)
    symbols = source.symbols(Timeframe.M5)
    start, end = ("2024-01-01", "2024-01-31") if quick else ("2024-01-01", "2024-09-07")
    where = (
        f"WHERE timestamp::TIMESTAMPTZ >= TIMESTAMPTZ '{start} 00:00:00+00' "
        f"AND timestamp::TIMESTAMPTZ < TIMESTAMPTZ '{end} 00:00:00+00' + INTERVAL 1 DAY"
    )
    scratch = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    try:
        target = scratch / "copy.parquet"
        con = duckdb.connect()
        ref_rows = con.execute(f"SELECT count(*) FROM read_parquet('{FILE}') {where}").fetchone()[0]

        def duckdb_copy() -> None:
            con.execute(f"COPY (SELECT * FROM read_parquet('{FILE}') {where}) TO '{target}' (FORMAT parquet)")

        root = scratch / "warehouse"

        def ingest() -> IngestReport:
            return ingest_raw(source, Warehouse(root), symbols, "5m", start, end, progress=False)

        # Alternate the two so that load from other work on the machine hits both alike; keep the best.
        ref_s = ours_s = float("inf")
        report: IngestReport | None = None
        repeat = 2 if quick else REPEAT
        for _ in range(repeat):
            target.unlink(missing_ok=True)
            ref_s = min(ref_s, _timed(duckdb_copy)[0])
            shutil.rmtree(root, ignore_errors=True)
            seconds, report = _timed(ingest)
            ours_s = min(ours_s, seconds)
        con.close()
        assert report is not None and report.rows_stored == ref_rows, (report, ref_rows)
        ref_rate, ours_rate = ref_rows / ref_s, report.rows_stored / ours_s
        return [
            BenchResult(
                name=f"ingest {report.rows_stored:,} 5m bars ({len(symbols)} symbols) into a fresh warehouse",
                figure=ours_rate,
                unit="rows/s",
                reference_name="duckdb read_parquet -> COPY TO parquet",
                reference=ref_rate,
                target=">= 0.5x reference",
                note=f"ours {ours_s:.2f} s, {report.partitions_written} day partitions; duckdb {ref_s:.2f} s, one file; best of {repeat}",
            )
        ]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    print_table(run(quick="--quick" in sys.argv))

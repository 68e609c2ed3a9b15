"""What every benchmark returns: a figure, the reference measured in the same run, and their ratio.

Each `bench/bench_*.py` exposes `run(quick: bool = False) -> list[BenchResult]` and, run as a script,
prints its own table. `bench/run_all.py` runs them all and writes docs/benchmarks.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class BenchResult:
    name: str  # what was measured, e.g. "ingest 5m bars"
    figure: float  # our figure
    unit: str  # e.g. "rows/s"
    reference_name: str  # what the reference is, e.g. "duckdb read_parquet copy"
    reference: float  # the reference figure, same unit, same run
    target: str  # the target in words, e.g. ">= 0.5x reference"
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.figure / self.reference if self.reference else float("nan")

    def row(self) -> str:
        return (
            f"| {self.name} | {self.figure:,.1f} {self.unit} | {self.reference_name}: "
            f"{self.reference:,.1f} {self.unit} | {self.ratio:.2f}x | {self.target} | {self.note} |"
        )


TABLE_HEADER = "| benchmark | figure | reference (same run) | ratio | target | note |\n|---|---|---|---|---|---|"


def print_table(results: list[BenchResult]) -> str:
    table = "\n".join([TABLE_HEADER, *(r.row() for r in results)])
    print(table)
    return table


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Fastest wall time of `repeat` calls, in seconds (the least disturbed by the other core's work)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best

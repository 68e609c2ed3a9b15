"""`make bench`: run every `bench/bench_*.py`, print one table, write it to docs/benchmarks.md.

`--quick` runs the smaller variants (what the tests use to keep the benchmarks themselves working).
Each row carries the 1-minute load average read before and after its benchmark; the header names the
CPU, the core count and the load average at the start and the end (the other users of the cores show).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, TABLE_HEADER, BenchResult  # noqa: E402


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_1min() -> float:
    return os.getloadavg()[0]


def with_load(result: BenchResult, before: float, after: float) -> BenchResult:
    load = f"load avg {before:.1f} -> {after:.1f}"
    result.note = f"{result.note}; {load}" if result.note else load
    return result


def skipped(path: Path) -> str | None:
    """Why a benchmark cannot run here (its optional dependency is missing), or None."""
    if path.stem == "bench_llm_server" and importlib.util.find_spec("llama_cpp") is None:
        return "skipped: llama-cpp-python (the extra `crypto-pipeline[llama]`) is not installed"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller inputs (seconds instead of minutes)")
    parser.add_argument("--only", default="", help="substring of the benchmark files to run")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args()

    rows: list[str] = []
    failures: list[str] = []
    timings: list[str] = []
    load_start, run_start = load_1min(), time.perf_counter()
    for path in sorted(Path(__file__).resolve().parent.glob("bench_*.py")):
        if args.only and args.only not in path.stem:
            continue
        print(f"== {path.stem}", flush=True)
        reason = skipped(path)
        if reason is not None:
            rows.append(f"| {path.stem} | - | - | - | - | {reason} |")
            print(f"   {reason}", flush=True)
            continue
        started, before = time.perf_counter(), load_1min()
        try:
            results = load(path).run(quick=args.quick)
            after = load_1min()
            rows.extend(with_load(r, before, after).row() for r in results)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            after = load_1min()
            failures.append(
                f"{path.stem}: {type(exc).__name__}: {exc} (load avg {before:.1f} -> {after:.1f})"
            )
            print(f"   FAILED: {exc}", flush=True)
        seconds = time.perf_counter() - started
        timings.append(f"{path.stem} {seconds:.0f} s")
        print(f"   ({seconds:.0f} s)", flush=True)
    load_end, total_s = load_1min(), time.perf_counter() - run_start

    table = "\n".join([TABLE_HEADER, *rows])
    print()
    print(table)
    if not args.no_write and not args.quick:
        doc = REPO_ROOT / "docs" / "benchmarks.md"
        doc.write_text(
            "# Benchmarks\n\n"
            "Produced by `make bench` (`python bench/run_all.py`). Every figure is measured together with its\n"
            "reference in the same run on the same machine; the ratio is figure / reference.\n\n"
            f"Machine: {cpu_model()}, {os.cpu_count()} cores ({platform.machine()}), "
            f"Python {platform.python_version()}, run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{total_s / 60:.0f} minutes in all.\n"
            f"Load average (1 min): {load_start:.1f} at the start, {load_end:.1f} at the end; each row's note "
            "gives it before and after its benchmark (the cores are shared: figures taken under a load above\n"
            "the core count are slower than on a quiet machine, ratios less so).\n\n"
            f"Time per benchmark: {', '.join(timings)}.\n\n{table}\n"
            + ("\nFailed:\n" + "\n".join(f"- {f}" for f in failures) + "\n" if failures else "")
        )
        print(f"\nwritten to {doc.relative_to(REPO_ROOT)}")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

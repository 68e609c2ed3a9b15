"""`make bench`: run every `bench/bench_*.py`, print one table, write it to docs/benchmarks.md.

`--quick` runs the smaller variants (what the tests use to keep the benchmarks themselves working).
"""

from __future__ import annotations

import argparse
import importlib.util
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller inputs (seconds instead of minutes)")
    parser.add_argument("--only", default="", help="substring of the benchmark files to run")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args()

    results: list[BenchResult] = []
    failures: list[str] = []
    for path in sorted(Path(__file__).resolve().parent.glob("bench_*.py")):
        if args.only and args.only not in path.stem:
            continue
        print(f"== {path.stem}", flush=True)
        started = time.perf_counter()
        try:
            results.extend(load(path).run(quick=args.quick))
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            failures.append(f"{path.stem}: {type(exc).__name__}: {exc}")
            print(f"   FAILED: {exc}", flush=True)
        print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)

    table = "\n".join([TABLE_HEADER, *(r.row() for r in results)])
    print()
    print(table)
    if not args.no_write and not args.quick:
        doc = REPO_ROOT / "docs" / "benchmarks.md"
        doc.write_text(
            "# Benchmarks\n\n"
            "Produced by `make bench` (`python bench/run_all.py`). Every figure is measured together with its\n"
            "reference in the same run on the same machine; the ratio is figure / reference.\n\n"
            f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
            f"run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n{table}\n"
            + ("\nFailed:\n" + "\n".join(f"- {f}" for f in failures) + "\n" if failures else "")
        )
        print(f"\nwritten to {doc.relative_to(REPO_ROOT)}")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

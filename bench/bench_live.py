"""Benchmarks of the live loop (`crypto_pipeline/live/`) against the local exchange, through alpaca-py.

1. Decision -> order latency: from the provider's answer to the venue's acknowledgement of the order (the
   risk verdict, the journal rows and `POST /v2/orders` through `TradingClient`), p50 and p99, with the
   rule provider over many pairs on a stepped exchange moved an hour at a time (so every decision time is
   a full one, whatever the machine's speed). Reference: a bare HTTP round trip (`GET /v2/clock` on a
   keep-alive `requests` session) to the same server in the same run. Target: p99 under 50 ms.
   Then the same with SmolLM2-135M (`LocalLLM`: the registered champion, else the newest challenger, else
   the base model) on fewer decision times, with its decision latency (the model's own time per state).
2. Throughput and memory: one session on 100+ pairs (1h bars, 136 pairs in the shared 2024 set) while
   the exchange replays at a fixed speed; messages/s the loop handles against messages/s the exchange sent
   it (dropped = sent - handled, must be 0), and the process RSS sampled every second (bounded: the last
   third's peak within 10% of the first third's, the rolling buffers being full from the start).

The machine these run on is shared: figures move with its load, which each row's note records.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import requests
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import BenchResult, print_table  # noqa: E402
from crypto_pipeline.config import SHARED_MARKET_DATA, get_settings  # noqa: E402
from crypto_pipeline.exchange import ExchangeConfig, ExchangeServer  # noqa: E402
from crypto_pipeline.live.config import LiveConfig  # noqa: E402
from crypto_pipeline.live.session import LiveSession, SessionReport  # noqa: E402
from crypto_pipeline.live.summary import summarize_journal  # noqa: E402
from crypto_pipeline.live.venue import Clients, Credentials, Endpoints  # noqa: E402
from crypto_pipeline.warehouse import Warehouse  # noqa: E402

KEY, SECRET = "bench-live-key", "bench-live-secret"
DATA = SHARED_MARKET_DATA / "binance-spot-2024"
START = datetime(2024, 8, 1, tzinfo=UTC)


def _load() -> str:
    return "load avg {:.1f}/{:.1f}/{:.1f} on {} cores".format(*os.getloadavg(), os.cpu_count())


def _exchange(workdir: Path, name: str, **overrides: object) -> ExchangeServer:
    values: dict[str, object] = {
        "port": 0,
        "key": KEY,
        "secret": SECRET,
        "data_dir": DATA,
        "capture_dir": None,
        "db_path": workdir / f"{name}.sqlite",
        "start": START.isoformat(),
        "reset": True,
    }
    values.update(overrides)
    return ExchangeServer(ExchangeConfig(**values)).start()


def _session(server: ExchangeServer, workdir: Path, provider: object, **config: object) -> LiveSession:
    clients = Clients.connect(
        Endpoints.local(server.base_url), Credentials(SecretStr(KEY), SecretStr(SECRET))
    )
    values: dict[str, object] = {"session_id": "bench", "grace_s": 0.5, "lookback_days": 30}
    values.update(config)
    return LiveSession(LiveConfig(**values), clients, provider, Warehouse(workdir / "warehouse"))


class _Background:
    """A session's `run()` in a thread."""

    def __init__(self, session: LiveSession) -> None:
        self.session, self.error = session, None
        self.report: SessionReport | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.report = self.session.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the benchmark
            self.error = exc

    def start(self, timeout: float = 300) -> _Background:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.session.subscribed.is_set():
            self._check(deadline, "subscribe")
        return self

    def wait_batches(self, n: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.session.report.decision_batches < n:
            self._check(deadline, f"reach {n} decision times")

    def _check(self, deadline: float, what: str) -> None:
        if self.error is not None:
            raise self.error
        if time.monotonic() > deadline:
            raise TimeoutError(f"the session did not {what}")
        time.sleep(0.01)

    def stop(self) -> SessionReport:
        self.session.stop("benchmark over")
        self.thread.join(timeout=120)
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


def http_round_trip_ms(base_url: str, n: int = 300) -> np.ndarray:
    """A bare keep-alive HTTP round trip to the exchange (its clock, authenticated like the session)."""
    headers = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
    with requests.Session() as http:
        for _ in range(20):  # warm the connection
            http.get(f"{base_url}/v2/clock", headers=headers, timeout=10)
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            http.get(f"{base_url}/v2/clock", headers=headers, timeout=10).raise_for_status()
            out.append((time.perf_counter() - t0) * 1e3)
    return np.asarray(out)


def stepped_latency(
    provider: object, symbols: list[str], hours: int, workdir: Path, name: str
) -> tuple[SessionReport, np.ndarray, Path]:
    """A session stepped `hours` hours; its report and the bare HTTP round trips measured right after."""
    with contextlib.ExitStack() as stack:
        server = _exchange(workdir, name, speed=0.0, stepped=True)
        stack.callback(server.stop)
        session = _session(
            server,
            workdir,
            provider,
            session_id=name,
            symbols=tuple(symbols),
            timeframe="1h",
            decision_interval="1h",
            max_runtime_s=3600,
        )
        running = _Background(session).start()
        running.wait_batches(1)
        clock = START
        for _ in range(hours):
            done = session.report.decision_batches
            clock += timedelta(hours=1)
            server.advance_to(clock)
            running.wait_batches(done + 1)
        report = running.stop()
        reference = http_round_trip_ms(server.base_url)
    return report, reference, workdir / "warehouse"


def latency_results(quick: bool, workdir: Path) -> list[BenchResult]:
    from crypto_pipeline.llm.rule_based import RuleBased

    results = []
    symbols = _symbols(60 if not quick else 12)
    hours = 72 if not quick else 12
    report, http, _ = stepped_latency(RuleBased(), symbols, hours, workdir, "rules")
    lat = np.asarray(report.decision_to_order_ms)
    if lat.size == 0:
        raise RuntimeError("the rule provider placed no order: no latency to measure")
    ref50, ref99 = np.percentile(http, [50, 99])
    p50, p99 = np.percentile(lat, [50, 99])
    note = (
        f"{report.decisions} decisions, {lat.size} orders over {len(symbols)} pairs x {hours} h; "
        f"{http.size} bare round trips; {_load()}"
    )
    results += [
        BenchResult("decision->order p50, rules", p50, "ms", "bare HTTP round trip p50", ref50,
                    "(informative)", higher_is_better=False, note=note),
        BenchResult("decision->order p99, rules", p99, "ms", "bare HTTP round trip p99", ref99,
                    "p99 < 50 ms", higher_is_better=False, note=note),
    ]
    return results


def _llm_provider() -> tuple[object, str]:
    """The registered champion (else the newest challenger), or the base SmolLM2 when none is registered."""
    settings = get_settings()
    from crypto_pipeline.live.providers import choose_provider

    if (Path(settings.mlruns_dir) / "mlflow.db").exists():
        with contextlib.suppress(Exception):
            choice = choose_provider("local", "champion", settings)
            return choice.provider, choice.note
    from crypto_pipeline.llm.local import LocalLLM

    return LocalLLM(), "base SmolLM2-135M (no model registered)"


def llm_latency_results(quick: bool, workdir: Path) -> list[BenchResult]:
    provider, which = _llm_provider()
    symbols = _symbols(4 if not quick else 2)
    hours = 12 if not quick else 2
    report, http, wh = stepped_latency(provider, symbols, hours, workdir, "llm")
    summary = summarize_journal(Warehouse(wh), "llm")
    ref50, ref99 = np.percentile(http, [50, 99])
    lat = np.asarray(report.decision_to_order_ms)
    note = (
        f"{which}: {summary.decisions} decisions ({summary.valid_rate or 0:.0%} valid), {lat.size} orders, "
        f"{len(symbols)} pairs x {hours} h; {_load()}"
    )
    results = [
        BenchResult("SmolLM2 decision latency p50 (per state, batched)", summary.latency_p50_ms or 0.0,
                    "ms", "bare HTTP round trip p50", ref50, "(informative)", higher_is_better=False,
                    note=note),
    ]
    if lat.size:
        results.append(
            BenchResult("decision->order p99, SmolLM2", float(np.percentile(lat, 99)), "ms",
                        "bare HTTP round trip p99", ref99, "p99 < 50 ms", higher_is_better=False, note=note)
        )
    return results


def _symbols(n: int) -> list[str]:
    """`n` pairs with 1h bars in the shared 2024 set over the whole replay (sorted, so runs repeat)."""
    import polars as pl

    counts = (
        pl.scan_parquet(DATA / "bars_1h.parquet")
        .filter(pl.col("timestamp") >= START - timedelta(days=31))
        .group_by("symbol")
        .len()
        .collect()
    )
    full = counts.filter(pl.col("len") >= counts["len"].max() * 0.95)["symbol"].sort().to_list()
    return full[:n]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def throughput_results(quick: bool, workdir: Path, speed: float, seconds: float) -> list[BenchResult]:
    from crypto_pipeline.llm.rule_based import RuleBased

    symbols = _symbols(136)
    server = _exchange(workdir, f"stream-{speed:g}", speed=speed)
    try:
        session = _session(
            server,
            workdir,
            RuleBased(),
            session_id=f"stream-{speed:g}",
            symbols=tuple(symbols),
            timeframe="1h",
            decision_interval="1h",
            max_runtime_s=seconds + 600,
            stale_after_s=60,
        )
        running = _Background(session).start()
        hub = server.venue.data_hub
        sent0, handled0 = hub.messages_sent, session.report.stream_bars + session.report.malformed_messages
        t0 = time.monotonic()
        rss = []
        while time.monotonic() - t0 < seconds:
            time.sleep(1.0)
            rss.append(_rss_mb())
            if running.error is not None:
                raise running.error
        sent = hub.messages_sent - sent0
        elapsed = time.monotonic() - t0
        # then let the loop take what is already on the wire before counting
        settled, deadline = -1, time.monotonic() + 30
        while time.monotonic() < deadline:
            handled = session.report.stream_bars + session.report.malformed_messages - handled0
            if handled == settled and session.events.empty():
                break
            settled = handled
            time.sleep(1.0)
        report = running.stop()
    finally:
        server.stop()
    sent_total = hub.messages_sent - sent0
    handled = report.stream_bars + report.malformed_messages - handled0
    third = max(1, len(rss) // 3)
    early, late = max(rss[:third]), max(rss[-third:])
    note = (
        f"{len(symbols)} pairs, speed {speed:g}x for {elapsed:.0f} s; sent {sent_total:,}, handled {handled:,}, "
        f"dropped {sent_total - handled:,}; {report.decision_batches} decision times "
        f"({report.decision_times_skipped} skipped), {report.decisions:,} decisions; {_load()}"
    )
    return [
        BenchResult(f"live loop bars/s handled, {len(symbols)} pairs at {speed:g}x", handled / elapsed,
                    "msg/s", "bars/s the exchange sent it", sent / elapsed, "1.00x (none dropped)",
                    note=note),
        BenchResult(f"live loop RSS, last third peak ({len(rss)} s sampled)", late, "MiB",
                    "first third peak", early, "<= 1.10x (bounded)", higher_is_better=False, note=note),
    ]


def run(quick: bool = False) -> list[BenchResult]:
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        workdir = Path(tmp)
        results = latency_results(quick, workdir)
        results += llm_latency_results(quick, workdir)
        results += throughput_results(quick, workdir, speed=3600.0, seconds=30 if quick else 300)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["latency", "llm", "stream"], default=None)
    parser.add_argument("--speed", type=float, default=3600.0)
    parser.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        workdir = Path(tmp)
        if args.only == "latency":
            results = latency_results(args.quick, workdir)
        elif args.only == "llm":
            results = llm_latency_results(args.quick, workdir)
        elif args.only == "stream":
            results = throughput_results(args.quick, workdir, args.speed, args.seconds)
        else:
            results = run(args.quick)
    print_table(results)


if __name__ == "__main__":
    main()

"""Benchmarks of the live loop (`crypto_pipeline/live/`) against the local exchange, through alpaca-py.

1. Decision -> order latency: from the provider's answer to the venue's acknowledgement of the order (the
   risk verdict, the journal rows and `POST /v2/orders` through `TradingClient`), p50 and p99, with the
   rule provider over many pairs on a stepped exchange moved an hour at a time (so every decision time is
   a full one, whatever the machine's speed). Reference: a bare HTTP round trip (`GET /v2/clock` on a
   keep-alive `requests` session) to the same server in the same run. Target: p99 under 50 ms.
   Then the same with SmolLM2-135M (`LocalLLM`: the registered champion, else the newest challenger, else
   the base model) on fewer decision times, with its decision latency (the model's own time per state).
2. Throughput and memory: one session on 100+ pairs (1h bars, 136 pairs in the shared 2024 set) while
   the exchange replays at a fixed speed; messages/s the loop handles (bars, quotes and order books: each
   1h bar of a bar-only pair comes with a quote and a full book) against messages/s the exchange sent it
   (dropped = sent - handled, must be 0), and the process RSS sampled every second (bounded: the last
   third's peak within 10% of the first third's, the rolling buffers being full from the start).

The machine these run on is shared: figures move with its load, which each row's note records.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
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
from crypto_pipeline.journal.summary import summarize_journal  # noqa: E402
from crypto_pipeline.live.config import LiveConfig  # noqa: E402
from crypto_pipeline.live.session import LiveSession, SessionReport  # noqa: E402
from crypto_pipeline.live.shadow import Shadow  # noqa: E402
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


def _session(
    server: ExchangeServer, workdir: Path, provider: object, shadows: list | None = None, **config: object
) -> LiveSession:
    clients = Clients.connect(
        Endpoints.local(server.base_url), Credentials(SecretStr(KEY), SecretStr(SECRET))
    )
    values: dict[str, object] = {"session_id": "bench", "grace_s": 0.5, "lookback_days": 30}
    values.update(config)
    warehouse = Warehouse(workdir / "warehouse")
    session_id = str(values["session_id"])
    made = [
        Shadow(p, str(i + 1), getattr(p, "name", "shadow"), session_id, warehouse, init_cash=10_000.0)
        for i, p in enumerate(shadows or [])
    ]
    return LiveSession(LiveConfig(**values), clients, provider, warehouse, shadows=made)


class SlowFailingShadow:
    """A shadow model that takes `delay_s` per decision time and raises at every other one."""

    name = "slow-failing-shadow"

    def __init__(self, delay_s: float) -> None:
        self.delay_s, self.calls = delay_s, 0

    def decide(self, states: list) -> list:
        from crypto_pipeline.llm.rule_based import RuleBased

        self.calls += 1
        time.sleep(self.delay_s)
        if self.calls % 2 == 0:
            raise RuntimeError("a shadow that fails")
        return RuleBased().decide(states)


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
    provider: object, symbols: list[str], hours: int, workdir: Path, name: str, shadows: list | None = None
) -> tuple[SessionReport, np.ndarray, Path]:
    """A session stepped `hours` hours; its report and the bare HTTP round trips measured right after."""
    with contextlib.ExitStack() as stack:
        server = _exchange(workdir, name, speed=0.0, stepped=True)
        stack.callback(server.stop)
        session = _session(
            server,
            workdir,
            provider,
            shadows,
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
        BenchResult(
            "decision->order p50, rules",
            p50,
            "ms",
            "bare HTTP round trip p50",
            ref50,
            "(informative)",
            higher_is_better=False,
            note=note,
        ),
        BenchResult(
            "decision->order p99, rules",
            p99,
            "ms",
            "bare HTTP round trip p99",
            ref99,
            "p99 < 50 ms",
            higher_is_better=False,
            note=note,
        ),
    ]
    # The same session with a shadow that needs 1 s per decision time and fails at every other one: the
    # session's orders must not wait for it (shadows run in their own thread, after the orders).
    shadowed, _, _ = stepped_latency(
        RuleBased(), symbols, hours, workdir, "rules-shadowed", shadows=[SlowFailingShadow(1.0)]
    )
    lat_s = np.asarray(shadowed.decision_to_order_ms)
    shadow = shadowed.shadows[0]
    results.append(
        BenchResult(
            "decision->order p99, rules, beside a slow failing shadow",
            float(np.percentile(lat_s, 99)),
            "ms",
            "the same session without the shadow, p99",
            p99,
            "~1x (the shadow never delays orders)",
            higher_is_better=False,
            note=f"{lat_s.size} orders; the shadow (1 s a decision time, raising every other time: journaled as invalid HOLDs) decided "
            f"{shadow.decision_times} times, skipped {shadow.skipped}, failed {shadow.failed}; {_load()}",
        )
    )
    return results


def _llm_provider() -> tuple[object, str]:
    """The registered champion (else the newest challenger), or the base SmolLM2 when none is registered."""
    settings = get_settings()
    from crypto_pipeline.registry import CHAMPION, make_provider

    if (Path(settings.mlruns_dir) / "mlflow.db").exists():
        with contextlib.suppress(Exception):
            choice = make_provider("local", settings, ref=CHAMPION, fallback=True, load=True)
            return choice.provider, choice.note
    from crypto_pipeline.llm.local import LocalLLM

    return LocalLLM().load(), "base SmolLM2-135M (no model registered)"


def llm_latency_results(quick: bool, workdir: Path) -> list[BenchResult]:
    provider, which = _llm_provider()
    # Minutes per decision time on a busy 2-core machine (250 s for three pairs under a load of 13).
    symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT"][: 3 if not quick else 1]
    hours = 4 if not quick else 2
    report, http, wh = stepped_latency(provider, symbols, hours, workdir, "llm")
    summary = summarize_journal(Warehouse(wh), "llm")
    ref50, ref99 = np.percentile(http, [50, 99])
    lat = np.asarray(report.decision_to_order_ms)
    note = (
        f"{which}: {summary.decisions} decisions ({summary.valid_rate or 0:.0%} valid), {lat.size} orders, "
        f"{len(symbols)} pairs x {hours} h; {_load()}"
    )
    results = [
        BenchResult(
            "SmolLM2 decision latency p50 (per state, batched)",
            summary.latency_p50_ms or 0.0,
            "ms",
            "bare HTTP round trip p50",
            ref50,
            "(informative)",
            higher_is_better=False,
            note=note,
        ),
    ]
    if lat.size:
        results.append(
            BenchResult(
                "decision->order p99, SmolLM2",
                float(np.percentile(lat, 99)),
                "ms",
                "bare HTTP round trip p99",
                ref99,
                "p99 < 50 ms",
                higher_is_better=False,
                note=note,
            )
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


def _serve_exchange(config: dict) -> None:
    """`bench_live.py --serve-exchange CONFIG`: the exchange in a child process (so the RSS sampled is the
    live loop's alone); prints its URL, then answers each `stats` line on stdin with (messages sent on the
    market data stream, replay exhausted) as JSON, until `stop`."""
    with ExchangeServer(ExchangeConfig(**config)) as server:
        print(json.dumps(server.base_url), flush=True)
        for line in sys.stdin:
            if line.strip() != "stats":
                break
            stats = (server.venue.data_hub.messages_sent, server.venue.replayer.exhausted)
            print(json.dumps(stats), flush=True)


def _replay_window(workdir: Path, symbols: list[str], hours: float) -> Path:
    """The 1h bars of `symbols` from 31 days before START to `hours` after it: the replay then ends, and
    everything the exchange sent can be counted against what the loop handled."""
    import polars as pl

    directory = workdir / "stream-data"
    directory.mkdir(exist_ok=True)
    (
        pl.scan_parquet(DATA / "bars_1h.parquet")
        .filter(
            pl.col("symbol").is_in(symbols),
            pl.col("timestamp") >= START - timedelta(days=31),
            pl.col("timestamp") < START + timedelta(hours=hours),
        )
        .collect()
        .write_parquet(directory / "bars_1h.parquet")
    )
    return directory


def throughput_results(quick: bool, workdir: Path, speed: float, seconds: float) -> list[BenchResult]:
    from crypto_pipeline.llm.rule_based import RuleBased

    symbols = _symbols(136)
    data = _replay_window(workdir, symbols, hours=speed * seconds / 3600)
    config = {
        "port": 0,
        "key": KEY,
        "secret": SECRET,
        "data_dir": str(data),
        "capture_dir": None,
        "db_path": str(workdir / "stream.sqlite"),
        "start": START.isoformat(),
        "speed": speed,
        "reset": True,
    }
    exchange = subprocess.Popen(
        [sys.executable, __file__, "--serve-exchange", json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )

    def stats() -> tuple[int, bool]:
        exchange.stdin.write("stats\n")  # type: ignore[union-attr]
        exchange.stdin.flush()  # type: ignore[union-attr]
        sent, exhausted = json.loads(exchange.stdout.readline())  # type: ignore[union-attr]
        return sent, exhausted

    try:
        base_url = json.loads(exchange.stdout.readline())  # type: ignore[union-attr]
        clients = Clients.connect(Endpoints.local(base_url), Credentials(SecretStr(KEY), SecretStr(SECRET)))
        live = LiveConfig(
            session_id="stream",
            symbols=tuple(symbols),
            timeframe="1h",
            decision_interval="1h",
            lookback_days=30,
            grace_s=0.5,
            max_runtime_s=seconds + 900,
            stale_after_s=60,
        )
        session = LiveSession(live, clients, RuleBased(), Warehouse(workdir / "warehouse"))
        running = _Background(session).start()
        books = session.books.counts

        def handled() -> int:
            """Bars, quotes and book messages the loop took in (or skipped as malformed), less the full
            book per pair the exchange sends on subscribe, which it does not count as sent."""
            report = session.report
            book_messages = books.book_resets + books.book_updates + books.updates_ignored
            messages = report.stream_bars + books.quotes + book_messages + report.malformed_messages
            return messages - len(symbols)

        t0, rss = time.monotonic(), []
        sent, exhausted = stats()
        while not exhausted:
            time.sleep(1.0)
            rss.append(_rss_mb())
            if running.error is not None:
                raise running.error
            sent, exhausted = stats()
        replayed = time.monotonic() - t0
        deadline = time.monotonic() + 60  # what is on the wire still reaches the loop
        while handled() < sent and time.monotonic() < deadline:
            time.sleep(0.2)
        caught_up = time.monotonic() - t0
        got = handled()
        report = running.stop()
    finally:
        with contextlib.suppress(Exception):
            exchange.communicate("stop\n", timeout=60)
        if exchange.poll() is None:
            exchange.kill()
    third = max(1, len(rss) // 3)
    early, late = max(rss[:third]), max(rss[-third:])
    note = (
        f"{len(symbols)} pairs of 1h bars, exchange at {speed:g}x in another process, {replayed:.0f} s of "
        f"replay; sent {sent:,}, handled {got:,} ({sent - got:,} dropped; {report.stream_bars:,} bars, "
        f"{books.quotes:,} quotes, {books.book_resets + books.book_updates - len(symbols):,} books) "
        f"{caught_up - replayed:.1f} s after "
        f"the replay ended; {report.decision_batches} decision times ({report.decision_times_skipped} "
        f"skipped: the loop fell behind), {report.decisions:,} decisions; RSS {min(rss):.0f}-{max(rss):.0f} "
        f"MiB; {_load()}"
    )
    return [
        BenchResult(
            f"live loop messages/s handled (bars, quotes, books), {len(symbols)} pairs at {speed:g}x",
            got / caught_up,
            "msg/s",
            "messages/s the exchange sent it",
            sent / caught_up,
            "1.00x (none dropped)",
            note=note,
        ),
        BenchResult(
            f"live loop RSS, last third peak ({len(rss)} s sampled)",
            late,
            "MiB",
            "first third peak",
            early,
            "<= 1.10x (bounded)",
            higher_is_better=False,
            note=note,
        ),
    ]


def run(quick: bool = False) -> list[BenchResult]:
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        workdir = Path(tmp)
        results = latency_results(quick, workdir)
        results += llm_latency_results(quick, workdir)
        # BENCH_LIVE_SECONDS: a shorter throughput window than the 300 s default (make bench on a busy box).
        seconds = 30 if quick else float(os.environ.get("BENCH_LIVE_SECONDS", "300"))
        results += throughput_results(quick, workdir, speed=3600.0, seconds=seconds)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["latency", "llm", "stream"], default=None)
    parser.add_argument("--speed", type=float, default=3600.0)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--serve-exchange", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_exchange:
        _serve_exchange(json.loads(args.serve_exchange))
        return
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

"""The folds of a walk-forward decide concurrently, one model call for every fold's states, and come out
exactly as when the folds run one after another: same decisions, fills, equity, cache rows and audits."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from crypto_pipeline.backtest.batching import FoldBatcher
from crypto_pipeline.backtest.cache import DecisionCache
from crypto_pipeline.backtest.walkforward import MarketData, WalkForwardConfig, walk_forward
from crypto_pipeline.config import SHARED_MARKET_DATA
from crypto_pipeline.llm.decision import TradeDecision
from crypto_pipeline.llm.rule_based import RuleBased
from crypto_pipeline.risk import RiskConfig
from crypto_pipeline.warehouse import Warehouse

CONFIG = WalkForwardConfig(
    symbols=("BTC/USDT", "ETH/USDT"),
    start="2024-01-01",
    end="2024-03-01",
    n_folds=3,
    test_days=2,
    decision_every_hours=4,
    data_dir=SHARED_MARKET_DATA / "binance-spot-2024",
    risk=RiskConfig(min_confidence=50),
)


@dataclass
class Recording:
    """A provider that counts the states of each call it gets (and can fail on its n-th call)."""

    inner: Any
    sizes: list[int] = field(default_factory=list)
    fail_on: int | None = None

    @property
    def name(self) -> str:
        return self.inner.name

    def decide(self, states: list) -> list[TradeDecision]:  # noqa: ANN001
        self.sizes.append(len(states))
        if self.fail_on is not None and len(self.sizes) == self.fail_on:
            raise RuntimeError("boom")
        return self.inner.decide(states)


def _fingerprint(report) -> list[tuple]:  # noqa: ANN001 - a WalkForwardReport
    out = []
    for r in report.results:
        run = r.run
        out.append(
            (
                r.policy,
                r.fold,
                round(r.metrics["total_return"], 12),
                tuple(
                    (d.symbol, d.at, d.action.value, d.confidence, d.position_size_pct) for d in run.decisions
                )
                if run
                else (),
                tuple((f.symbol, f.at, f.side, round(f.qty, 12), round(f.price, 8)) for f in run.fills)
                if run
                else (),
                tuple(round(x, 8) for x in run.equity.to_numpy()) if run else (),
                tuple((a.name, a.passed, a.detail) for a in r.audits),
                {k: v for k, v in r.llm.items() if k not in ("wall_s", "decisions_per_min")},
            )
        )
    return out


def _stored(rows) -> list[dict]:  # noqa: ANN001 - the decision_cache table
    """The cached decisions by prompt hash, without their timing."""
    decisions = [json.loads(d) for d in rows.sort("prompt_hash")["decision"]]
    return [{k: v for k, v in d.items() if k != "latency_ms"} for d in decisions]


@pytest.fixture(scope="module")
def data() -> MarketData:
    return MarketData.load(CONFIG)


@pytest.mark.requires_data("binance-spot-2024")
def test_concurrent_folds_equal_the_sequential_run_with_one_call_per_step(
    data: MarketData, tmp_path: Path
) -> None:
    runs = {}
    for concurrent in (False, True):
        provider = Recording(RuleBased())
        cache = DecisionCache(Warehouse(tmp_path / f"wh-{concurrent}"))
        report = walk_forward(
            CONFIG,
            signal_policies=("buy_hold",),
            providers={"rules": provider},
            cache=cache,
            data=data,
            audited=("rules",),
            audit_samples=1,
            concurrent=concurrent,
        )
        stored = Warehouse(tmp_path / f"wh-{concurrent}").read("decision_cache")
        runs[concurrent] = (report, provider.sizes, cache, stored)
    (seq, seq_sizes, seq_cache, seq_rows), (con, con_sizes, con_cache, con_rows) = runs[False], runs[True]
    assert [r.fold for r in seq.results] == [r.fold for r in con.results]
    assert any(d.action.value == "BUY" for r in con.results if r.run for d in r.run.decisions)
    assert sum(len(r.run.fills) for r in con.results if r.run) > 0
    assert _fingerprint(seq) == _fingerprint(con)
    assert (seq_cache.hits, seq_cache.misses) == (con_cache.hits, con_cache.misses)
    assert _stored(seq_rows) == _stored(con_rows)
    # Every state was decided, in a third of the calls: each call carried every fold's symbols.
    assert sum(seq_sizes) == sum(con_sizes)
    assert max(seq_sizes) == len(CONFIG.symbols)
    assert max(con_sizes) == CONFIG.n_folds * len(CONFIG.symbols)
    assert len(con_sizes) * 2 < len(seq_sizes)

    # A rerun from the cache asks the provider nothing and gives the same results.
    provider = Recording(RuleBased())
    again = walk_forward(
        CONFIG,
        signal_policies=("buy_hold",),
        providers={"rules": provider},
        cache=DecisionCache(Warehouse(tmp_path / "wh-True")),
        data=data,
        audited=("rules",),
        audit_samples=1,
    )
    # The truncation audit always re-asks the provider on cut data (1 sample, every fold at once).
    assert provider.sizes == [CONFIG.n_folds]
    strip = [(p, f, ret, d, fills, eq, a) for p, f, ret, d, fills, eq, a, _ in _fingerprint(again)]
    assert strip == [(p, f, ret, d, fills, eq, a) for p, f, ret, d, fills, eq, a, _ in _fingerprint(con)]


def test_the_batcher_waits_for_every_live_run_and_survives_a_failing_one() -> None:
    """Runs that ask at different speeds still share each call; a run that fails is closed and the
    others go on; the k-th call holds the k-th request of every run still going."""

    @dataclass
    class Echo:
        name: str = "echo"
        calls: list[list[tuple[int, int]]] = field(default_factory=list)

        def decide(self, states: list) -> list:  # noqa: ANN001
            self.calls.append(list(states))
            return [("done", s) for s in states]

    provider = Echo()
    batcher = FoldBatcher(provider, 3)
    answers: dict[int, list] = {}
    failed: list[int] = []

    def run(index: int, requests: int, fail_after: int | None = None) -> None:
        member = batcher.member(index)
        try:
            got = []
            for k in range(requests):
                time.sleep(0.002 * index)  # the runs reach each step at different times
                if fail_after is not None and k == fail_after:
                    raise RuntimeError("this run failed")
                got += member.decide([(index, k), (index, k)])
            answers[index] = got
        except RuntimeError:
            failed.append(index)
        finally:
            member.close()

    threads = [
        threading.Thread(target=run, args=(0, 4)),
        threading.Thread(target=run, args=(1, 2)),
        threading.Thread(target=run, args=(2, 4, 3)),  # fails before its 4th request
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert [sorted({k for _, k in call}) for call in provider.calls] == [[0], [1], [2], [3]]
    assert [sorted({i for i, _ in call}) for call in provider.calls] == [[0, 1, 2], [0, 1, 2], [0, 2], [0]]
    assert answers[0] == [("done", (0, k)) for k in range(4) for _ in range(2)]
    assert answers[1] == [("done", (1, k)) for k in range(2) for _ in range(2)]
    assert failed == [2] and 2 not in answers and batcher.calls == 4 and batcher.largest == 6
    # The member is the provider as the decision cache sees it: its name and attributes.
    assert batcher.member(0).name == "echo" and batcher.member(0).calls is provider.calls


def test_a_provider_failure_in_a_batched_call_is_an_invalid_hold_for_every_fold() -> None:
    from datetime import UTC, datetime

    from crypto_pipeline.state import MarketState

    provider = Recording(RuleBased(), fail_on=1)
    batcher = FoldBatcher(provider, 2)
    state = MarketState.model_construct(symbol="BTC/USDT", at=datetime(2024, 1, 1, tzinfo=UTC))
    out: dict[int, list[TradeDecision]] = {}

    def run(index: int) -> None:
        member = batcher.member(index)
        try:
            out[index] = member.decide([state])
        finally:
            member.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert provider.sizes == [2]
    assert all(not d.valid and "boom" in (d.error or "") for i in (0, 1) for d in out[i])


@pytest.mark.requires_data("binance-spot-2024")
def test_a_local_llm_decides_the_same_on_concurrent_folds(data: MarketData) -> None:
    """A real (tiny, random) transformers model behind LocalLLM: folds batched together, with their
    different prompt lengths left-padded in one batch, decide as each fold alone."""
    from transformers import AutoTokenizer

    from crypto_pipeline.config import get_settings
    from crypto_pipeline.llm.base_model import ensure_base_model
    from crypto_pipeline.llm.local import LocalLLM
    from tests.tiny_llama import tiny_llama

    tokenizer = AutoTokenizer.from_pretrained(ensure_base_model(get_settings().models_dir))
    model = tiny_llama(tokenizer, initializer_range=0.2).eval()  # wide init: answers vary by prompt
    config = replace(CONFIG, decision_every_hours=48)  # one decision time per fold
    decided = {}
    for concurrent in (False, True):
        llm = LocalLLM.from_objects(model, tokenizer, model_id="tiny-llama", batch_size=16)
        report = walk_forward(
            config, signal_policies=(), providers={"llm": llm}, data=data, concurrent=concurrent
        )
        decided[concurrent] = [
            (d.symbol, d.at, d.action.value, d.confidence, d.position_size_pct, d.raw_text)
            for r in report.results
            for d in r.run.decisions
        ]
    assert len(decided[True]) == config.n_folds * len(config.symbols)
    assert len({text for *_, text in decided[True]}) > 1  # not one answer for every prompt
    assert decided[False] == decided[True]

"""The `requires_data` marker and the `recorded` fixture: skip without the recorded data on a laptop, fail
without it in CI, run with it; this suite's own conftest.py runs in a scratch folder (pytester)."""

from __future__ import annotations

from pathlib import Path

import pytest

import crypto_pipeline.config

INNER_TESTS = """
import pytest

@pytest.mark.requires_data("binance-spot-2024")
def test_marked():
    pass

def test_asks_the_fixture(recorded):
    assert recorded("binance-spot-2024", "bars_1h.parquet").is_file()

def test_needs_no_data():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.Pytester:
    """A scratch suite with this suite's conftest.py, whose market data folder is `tmp_path/market-data`."""
    monkeypatch.setattr(crypto_pipeline.config, "SHARED_MARKET_DATA", tmp_path / "market-data")
    monkeypatch.delenv("CI", raising=False)
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini("[pytest]\naddopts = --strict-markers\nmarkers =\n    requires_data(*paths): recorded data\n")
    pytester.makepyfile(test_inner=INNER_TESTS)
    return pytester


def test_without_the_data_tests_that_need_it_skip_on_a_laptop(suite: pytest.Pytester) -> None:
    result = suite.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*recorded market data not found at *market-data/binance-spot-2024*"])


def test_without_the_data_tests_that_need_it_fail_in_ci(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, errors=1)  # the marker fails the setup, the fixture the call
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*CI must run the tests that need it*"])


def test_with_the_data_every_test_runs_in_ci(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    recorded = tmp_path / "market-data" / "binance-spot-2024"
    recorded.mkdir(parents=True)
    (recorded / "bars_1h.parquet").write_bytes(b"")
    monkeypatch.setenv("CI", "true")
    suite.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_the_fixture_and_the_marker_find_the_shared_data_beside_the_repository(recorded) -> None:
    root = recorded()
    assert root == crypto_pipeline.config.REPO_ROOT.parent / "shared" / "market-data"
    assert recorded("binance-spot-2024", "bars_5m.parquet").is_file()

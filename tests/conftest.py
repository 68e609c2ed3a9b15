"""Suite-wide helpers: where the recorded market data is, and what a test does when it is not there.

Nothing a test writes lands in the repository: the settings' warehouse and MLflow folders point to a
temporary folder for the whole session (see `_outputs_outside_the_repository`).

The recorded data lives in ../shared/market-data beside the repository (CI clones the repository with
../shared next to it). A test that needs it either asks for the `recorded` fixture or carries
`@pytest.mark.requires_data("binance-spot-2024", ...)` (paths inside the market data folder, none: the folder).
Without the data a test skips on a laptop, and fails when the `CI` environment variable is set: CI must run
every one of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crypto_pipeline.config import SHARED_MARKET_DATA, get_settings

# pytester runs the suite's own conftest in a scratch folder (tests/test_requires_data.py).
pytest_plugins = ["pytester"]

Recorded = Callable[..., Path]


def require_recorded(*parts: str) -> Path:
    """The path `parts` inside the recorded market data; skips the test without it (fails it in CI)."""
    path = SHARED_MARKET_DATA.joinpath(*parts)
    if not path.exists():
        message = f"recorded market data not found at {path}"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the tests that need it", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def recorded() -> Recorded:
    """`recorded("binance-spot-2024", "bars_5m.parquet")`: a path inside the recorded market data, or a
    skip (a failure in CI) when it is absent."""
    return require_recorded


@pytest.fixture(scope="session", autouse=True)
def _outputs_outside_the_repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point the default warehouse and MLflow folders (the repository's warehouse/ and mlruns/) to a temporary
    folder, so that no test writes models, runs or tables into the checkout. The base model converted from
    the embedded GGUF (500 MB, 20 s) is cached once per machine beside pytest's temporary folders."""
    root = tmp_path_factory.mktemp("settings")
    models_cache = tmp_path_factory.getbasetemp().parent / "crypto-pipeline-models"
    models_cache.mkdir(parents=True, exist_ok=True)
    (root / "warehouse").mkdir()
    (root / "warehouse" / "models").symlink_to(models_cache, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CRYPTO_PIPELINE_WAREHOUSE_DIR", str(root / "warehouse"))
        patch.setenv("CRYPTO_PIPELINE_MLRUNS_DIR", str(root / "mlruns"))
        get_settings.cache_clear()  # settings read while collecting still named the repository's folders
        yield
    get_settings.cache_clear()


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("requires_data"):
        for relative in marker.args or ("",):
            require_recorded(relative)

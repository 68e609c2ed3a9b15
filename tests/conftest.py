"""Suite-wide guards."""

import os

import pytest

from crypto_pipeline.config import SHARED_MARKET_DATA


def pytest_sessionstart(session: pytest.Session) -> None:
    # Tests that need the recorded market data skip without it on a laptop; in CI they must run.
    if os.environ.get("CI") and not SHARED_MARKET_DATA.is_dir():
        pytest.exit(f"CI needs the recorded market data at {SHARED_MARKET_DATA}", returncode=3)

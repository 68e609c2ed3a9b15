"""A real `/v1/chat/completions` endpoint on loopback, as vLLM, llama.cpp or OpenAI serve it, for the tests of
`OpenAICompatible` and of the dataset's teacher. A test sets its behaviour with `handler(body, call_no)`;
every request (headers, body) is kept in `requests`. Importable from every test folder: pytest puts `tests/`
on the path for `tests/conftest.py`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# (request body, 1-based call number) -> (HTTP status, JSON payload or raw text, seconds to wait first)
Handler = Callable[[dict[str, Any], int], tuple[int, dict[str, Any] | str, float]]


def completion(
    content: str, prompt_tokens: int = 400, completion_tokens: int = 30, model: str = "served-model-2024"
) -> dict[str, Any]:
    """A chat-completions response body carrying `content` and the token usage."""
    return {
        "id": "cmpl-1",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


def output_mode(body: dict[str, Any]) -> str:
    """The output form a request asks for, as `OpenAICompatible` names it."""
    if "format" in body:
        return "ollama"
    if "grammar" in body:
        return "gbnf"
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object" and "schema" not in fmt:
        return "json"
    return fmt.get("type", "text")


def refusing(refused: set[str], content: str) -> Handler:
    """A server that answers `content` but refuses the output modes in `refused` with a 400 naming the
    field, as servers without structured outputs do (vLLM/llama.cpp builds without json_schema, proxies)."""

    def handler(body: dict[str, Any], call_no: int) -> tuple[int, dict[str, Any], float]:
        mode = output_mode(body)
        if mode in refused:
            field = {"ollama": "format", "gbnf": "grammar"}.get(mode, "response_format")
            message = f"Unsupported {field}: type {mode!r} is not supported"
            return 400, {"error": {"message": message, "type": "invalid_request_error"}}, 0.0
        return 200, completion(content), 0.0

    return handler


class ChatCompletionsServer:
    """The endpoint, served from a daemon thread until `close()`; `url` ends in `/v1`."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.handler = handler
        server = self

        class _H(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((dict(self.headers), body))
                status, payload, delay = server.handler(body, len(server.requests))
                time.sleep(delay)
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

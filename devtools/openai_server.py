"""A small OpenAI-compatible embeddings server on 127.0.0.1, for tests and the README.

Speaks ``POST /v1/embeddings`` (``input``: a string or a list of strings; ``model``;
``dimensions``; ``encoding_format`` ``float``), answering with deterministic vectors
(:class:`cachebus.HashingEmbedder` of ``dim`` dimensions, so a text always gets the same
vector). It records every request (headers, body, when, how many were in flight) and
can be scripted to fail: :meth:`OpenAIServer.fail_next` queues answers such as
``(429, {"Retry-After": "0.05"})``, ``(500, {})`` or ``(400, {})`` for the next requests.
Standard library only (``http.server`` in a thread)::

    with OpenAIServer(dim=64, delay=0.05) as server:
        embedder = OpenAICompatibleEmbedder("m", base_url=server.base_url, api_key="sk-test")
        ...
        server.requests[0].headers["authorization"]   # 'Bearer sk-test'

``python -m devtools.openai_server --port 8000`` serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from cachebus.embedders import HashingEmbedder

_REASONS = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    """Lower-cased names."""
    body: dict[str, Any]
    started: float
    """When it arrived (``time.monotonic()``)."""
    in_flight: int
    """Requests in flight when this one arrived (itself included)."""
    status: int

    @property
    def inputs(self) -> list[str]:
        raw = self.body.get("input", [])
        return [raw] if isinstance(raw, str) else list(raw)


@dataclass
class _State:
    dim: int
    delay: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[Recorded] = field(default_factory=list)
    script: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    in_flight: int = 0
    max_in_flight: int = 0


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status, _REASONS.get(status))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {}
            arrived = time.monotonic()
            with state.lock:
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
                in_flight = state.in_flight
                scripted = state.script.popleft() if state.script else None
            try:
                if state.delay:
                    time.sleep(state.delay)
                status, payload, headers = self._answer(body, scripted)
                record = Recorded(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body if isinstance(body, dict) else {},
                    arrived,
                    in_flight,
                    status,
                )
                with state.lock:
                    state.requests.append(record)
                self._send(status, payload, headers)
            finally:
                with state.lock:
                    state.in_flight -= 1

        def _answer(
            self, body: Any, scripted: tuple[int, dict[str, str]] | None
        ) -> tuple[int, Any, dict[str, str]]:
            if self.path.rstrip("/") != "/v1/embeddings":
                return 404, {"error": {"message": f"no route {self.path}"}}, {}
            if scripted is not None:
                status, headers = scripted
                message = {
                    429: "Rate limit reached for requests",
                    400: "This model's maximum context length is 8192 tokens",
                }.get(status, "The server had an error while processing your request")
                return status, {"error": {"message": message, "type": "scripted"}}, headers
            inputs = body.get("input") if isinstance(body, dict) else None
            if isinstance(inputs, str):
                inputs = [inputs]
            if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
                return 400, {"error": {"message": "'input' must be a string or strings"}}, {}
            if not inputs or len(inputs) > 2048:
                return 400, {"error": {"message": "'input' must have 1 to 2048 items"}}, {}
            dim = int(body.get("dimensions") or state.dim)
            vectors = HashingEmbedder(dim).embed(inputs)
            return (
                200,
                {
                    "object": "list",
                    "model": body.get("model"),
                    "data": [
                        {"object": "embedding", "index": i, "embedding": v.tolist()}
                        for i, v in enumerate(vectors)
                    ],
                    "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
                },
                {},
            )

    return Handler


class OpenAIServer:
    """The server, on an ephemeral port of 127.0.0.1 (``port=0``), in a daemon thread."""

    def __init__(self, *, dim: int = 64, delay: float = 0.0, port: int = 0) -> None:
        self._state = _State(dim, delay)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self._state))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """What ``OpenAICompatibleEmbedder(base_url=...)`` takes."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[Recorded]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def max_in_flight(self) -> int:
        """The most requests that were in flight at once."""
        return self._state.max_in_flight

    @property
    def delay(self) -> float:
        return self._state.delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self._state.delay = seconds

    def fail_next(self, *answers: tuple[int, dict[str, str]]) -> None:
        """Answer the next requests with these statuses and headers, in order."""
        with self._state.lock:
            self._state.script.extend(answers)

    def reset(self) -> None:
        """Forget recorded requests, the in-flight maximum and unused scripted answers."""
        with self._state.lock:
            self._state.requests.clear()
            self._state.script.clear()
            self._state.max_in_flight = 0

    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="openai-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    server = OpenAIServer(dim=args.dim, port=args.port)
    print(f"serving POST {server.base_url}/embeddings (Ctrl-C stops)")
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()

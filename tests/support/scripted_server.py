"""A loopback HTTP server whose answers a test scripts: failures a real server cannot produce on demand.

Each request is handed to ``respond(request, calls)`` which returns ``Reply(status, body, delay_s)``;
``calls`` counts earlier requests to the same path, so "fail twice, then succeed" is one line. The
server records every request (path, JSON body, headers) and the most requests it served at once.
It listens on 127.0.0.1 on a free port and stops when its ``with`` block ends.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-encoded unless bytes
    delay_s: float = 0.0


@dataclass
class Received:
    method: str
    path: str
    body: Any
    headers: dict[str, str]


@dataclass
class ScriptedServer:
    respond: Callable[[Received, int], Reply]
    received: list[Received] = field(default_factory=list)
    max_in_flight: int = 0

    def __enter__(self) -> "ScriptedServer":
        server = self
        lock = threading.Lock()
        calls: dict[str, int] = {}
        in_flight = [0]

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                request = Received(
                    self.command, self.path, json.loads(raw) if raw else None, dict(self.headers)
                )
                with lock:
                    server.received.append(request)
                    n = calls.get(self.path, 0)
                    calls[self.path] = n + 1
                    in_flight[0] += 1
                    server.max_in_flight = max(server.max_in_flight, in_flight[0])
                try:
                    reply = server.respond(request, n)
                    time.sleep(reply.delay_s)
                    payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass
                finally:
                    with lock:
                        in_flight[0] -= 1

            do_GET = do_POST = _handle

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()  # handler threads still sleeping end on their own (delays are bounded)
        self._thread.join(timeout=10)

    def posted(self, path: str = "/v1/chat/completions") -> list[Any]:
        return [r.body for r in self.received if r.method == "POST" and r.path == path]


def chat_completion(
    text: str,
    *,
    finish_reason: str = "stop",
    stop_reason: Any = None,
    prompt_tokens: int = 7,
    completion_tokens: int = 3,
    logprobs: list[tuple[str, float]] | None = None,
) -> dict[str, Any]:
    """A chat-completion body as vLLM's OpenAI server writes it."""
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish_reason,
        "stop_reason": stop_reason,
    }
    if logprobs is not None:
        choice["logprobs"] = {
            "content": [{"token": t, "logprob": lp, "top_logprobs": []} for t, lp in logprobs]
        }
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "served-model",
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }

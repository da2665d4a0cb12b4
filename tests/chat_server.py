"""A fake OpenAI-compatible chat-completions server for tests (127.0.0.1 only).

``chat_server`` (a pytest fixture; import it into a test module) answers
``POST /v1/chat/completions``; ``server.url`` is the endpoint (``http://127.0.0.1:<port>/v1``).

Replies are scripted per prompt: ``server.script[marker] = [Canned(...), Canned(...)]`` answers
the requests whose prompt text contains ``marker`` with those replies in turn (the last one
repeats); other prompts get ``server.default``. Pick markers that no prompt contains by
accident ("one" is inside "none of the above"). A ``Canned`` can send a reply text (or
``content=None``), a status with headers (429 with Retry-After), a verbatim body (malformed
JSON), a 200 body without "choices", top log-probabilities, and can first sleep (a timeout).

Every request body is kept in ``server.requests`` (None for an unreadable body), with its
headers in ``server.headers``; ``server.max_in_flight`` is the most requests served at once.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Iterator, Mapping

import pytest

from tests.http_server import running


@dataclass(frozen=True)
class Canned:
    """One scripted answer."""

    content: str | None = "A"
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    raw_body: bytes | None = None  # sent verbatim instead of a JSON reply
    delay_s: float = 0.0  # sleep before answering (longer than the client timeout = a timeout)
    prompt_tokens: int = 100
    completion_tokens: int = 1
    top_logprobs: tuple[tuple[str, float], ...] = ()
    omit_choices: bool = False  # a 200 body holding an error object instead of choices

    def body(self, model: str) -> bytes:
        if self.raw_body is not None:
            return self.raw_body
        if self.status != 200:
            return json.dumps({"error": {"message": f"scripted HTTP {self.status}"}}).encode()
        if self.omit_choices:
            return json.dumps({"error": {"message": "upstream overloaded"}}).encode()
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": self.content}}
        if self.top_logprobs:
            choice["logprobs"] = {"content": [{
                "token": self.top_logprobs[0][0], "logprob": self.top_logprobs[0][1],
                "top_logprobs": [{"token": t, "logprob": lp} for t, lp in self.top_logprobs]}]}
        return json.dumps({
            "id": "chatcmpl-test", "object": "chat.completion", "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                      "total_tokens": self.prompt_tokens + self.completion_tokens}}).encode()


@dataclass
class ChatServer:
    url: str = ""
    script: dict[str, list[Canned]] = field(default_factory=dict)
    default: Canned = field(default_factory=Canned)
    requests: list[dict | None] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    served: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_answer(self, prompt: str) -> Canned:
        with self.lock:
            for marker, answers in self.script.items():
                if marker in prompt:
                    turn = self.served.get(marker, 0)
                    self.served[marker] = turn + 1
                    return answers[min(turn, len(answers) - 1)]
        return self.default

    def requests_for(self, marker: str) -> list[dict]:
        return [r for r in self.requests if r is not None and marker in prompt_text(r)]


def prompt_text(body: dict) -> str:
    """The text part of a chat request's first message."""
    content = body["messages"][0]["content"]
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def _make_handler(server: ChatServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, b'{"error": {"message": "no such route"}}', {})
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            with server.lock:
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                answer = server.next_answer(prompt_text(body) if body else "")
                time.sleep(answer.delay_s)
                self._send(answer.status, answer.body(body.get("model", "") if body else ""),
                           answer.headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (a timeout test)
            finally:
                with server.lock:
                    server.in_flight -= 1

        def _send(self, status: int, payload: bytes, headers: Mapping[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@contextmanager
def serving_chat() -> Iterator[ChatServer]:
    """Run a ``ChatServer`` on 127.0.0.1 (a free port) until the block ends."""
    server = ChatServer()
    with running(_make_handler(server), poll_interval=0.05) as url:
        server.url = f"{url}/v1"
        yield server


@pytest.fixture()
def chat_server() -> Iterator[ChatServer]:
    with serving_chat() as server:
        yield server

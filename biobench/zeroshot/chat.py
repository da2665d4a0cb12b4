"""An OpenAI-compatible chat-completions client for one image + one text prompt per request.

Works with OpenAI itself and with local servers that speak the same API (vLLM, SGLang, llama.cpp,
LM Studio): ``POST {endpoint}/chat/completions``. Only ``requests`` is used.

- ``ChatClient.complete`` sends one request and retries, with exponential back-off and jitter,
  on 429, 5xx, timeouts, dropped connections and unreadable 200 bodies, honouring
  ``Retry-After``. Any other 4xx is a mistake a retry cannot fix (bad key, unknown model, a
  server that rejects ``logprobs``): it raises ``ChatRequestError`` at once, naming the model
  and the endpoint.
- ``ReplyCache`` is a persistent SQLite cache of replies keyed by ``request_key``: the sha256 of
  the model name and of everything in the request that can change the reply (prompt, image
  sha256, decoding settings) but not the endpoint, so the same model served elsewhere reuses it.
  Each reply is committed on its own, so a killed run resumes where it stopped.
- ``complete_all`` answers many requests with a thread pool, cache first, with a progress bar.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import random
import sqlite3
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import requests

from biobench import config
from biobench.progress import progress_bar

RETRY_AFTER_CAP_S = 600.0  # a server asking for a longer pause is better answered by a rerun
BACKOFF_CAP_S = 60.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def default_cache_path() -> Path:
    """``$BIOBENCH_HOME/chat/replies.sqlite``."""
    return config.home_dir() / "chat" / "replies.sqlite"


class ChatRequestError(RuntimeError):
    """The server refused the request for a reason a retry cannot fix (4xx other than 429)."""


class ChatFailed(RuntimeError):
    """No usable reply after every retry (timeouts, 429/5xx, unreadable bodies)."""


@dataclass(frozen=True)
class ChatSettings:
    """The decoding settings sent with every request; all of them are part of the cache key.

    The defaults are μ-Bench's GPT-4o settings: temperature 1, image detail "high", at most
    2,048 tokens, top-10 log-probabilities. Many local servers reject ``logprobs``: turn it
    off with ``logprobs=False``.
    """

    temperature: float = 1.0
    max_tokens: int = 2048
    logprobs: bool = True
    top_logprobs: int = 10
    image_detail: str = "high"


@dataclass(frozen=True)
class ChatReply:
    """What one request returned: the text (``""`` when the server sent no content), the token
    counts of ``usage`` (0 when the server sent none) and the first generated token's top
    log-probabilities as (token, logprob) pairs (empty when not requested or not returned)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_logprobs: tuple[tuple[str, float], ...] = ()
    finish_reason: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ChatReply:
        data = json.loads(text)
        data["first_token_logprobs"] = tuple((t, float(lp)) for t, lp in data["first_token_logprobs"])
        return cls(**data)


@dataclass(frozen=True)
class ChatRequest:
    """One question to send: ``job`` identifies it to the caller; ``png`` is the image."""

    job: int
    prompt: str
    png: bytes


def request_key(model: str, prompt: str, image_sha256: str, settings: ChatSettings) -> str:
    """The cache key: sha256 of the model and the endpoint-independent request."""
    payload = {"model": model, "prompt": prompt, "image_sha256": image_sha256, **asdict(settings)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header as seconds: a number (fractions accepted, as some servers send
    them) or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)


def parse_reply(data: Any) -> ChatReply:
    """A chat-completions JSON body -> ``ChatReply``; ValueError when it has no reply in it."""
    if not isinstance(data, dict):
        raise ValueError(f"the body is a {type(data).__name__}, not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        error = data.get("error")
        detail = f" (it says: {_excerpt(json.dumps(error))})" if error else ""
        raise ValueError(f"the body has no 'choices'{detail}")
    choice = choices[0]
    message = choice.get("message") or {}
    content = message.get("content")
    if isinstance(content, list):  # some servers return content parts even for text
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    usage = data.get("usage") or {}
    first: tuple[tuple[str, float], ...] = ()
    token_logprobs = (choice.get("logprobs") or {}).get("content") or []
    if token_logprobs:
        first = tuple((str(alt["token"]), float(alt["logprob"]))
                      for alt in token_logprobs[0].get("top_logprobs") or [])
    return ChatReply(text=content or "",
                     prompt_tokens=int(usage.get("prompt_tokens") or 0),
                     completion_tokens=int(usage.get("completion_tokens") or 0),
                     first_token_logprobs=first,
                     finish_reason=choice.get("finish_reason"))


_HINTS = {
    400: "if the server rejects 'logprobs', ask again with logprobs=False",
    401: "set OPENAI_API_KEY (or pass api_key=) to a valid key",
    403: "the key has no access to this model",
    404: "check the endpoint (it usually ends in /v1) and the served model name",
}


class ChatClient:
    """Sends one prompt with one PNG image to ``model`` at ``endpoint``, with retries."""

    def __init__(self, model: str, endpoint: str, *, api_key: str | None = None,
                 settings: ChatSettings = ChatSettings(), timeout_s: float = 60.0,
                 max_retries: int = 5, backoff_s: float = 1.0):
        if not model:
            raise ValueError("the chat model name is empty")
        self.model = model
        self.endpoint = endpoint.rstrip("/")
        self.url = self.endpoint + "/chat/completions"
        self.api_key = api_key
        self.settings = settings
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._local = threading.local()  # a requests.Session per thread: sessions are not thread-safe

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def body(self, prompt: str, png: bytes) -> dict[str, Any]:
        """The JSON body of the request for ``prompt`` and the image ``png``."""
        url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": url, "detail": self.settings.image_detail}},
            ]}],
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_tokens,
        }
        if self.settings.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.settings.top_logprobs
        return body

    def _pause(self, attempt: int, retry_after: float | None) -> None:
        if retry_after is not None:
            time.sleep(retry_after)
            return
        # full-range jitter keeps many threads that failed together from retrying together
        time.sleep(min(BACKOFF_CAP_S, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0))

    def complete(self, prompt: str, png: bytes) -> ChatReply:
        """The reply to one request; ``ChatRequestError`` for a refusal a retry cannot fix,
        ``ChatFailed`` when every one of the ``1 + max_retries`` attempts failed."""
        body = self.body(prompt, png)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last_problem = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                response = self._session().post(self.url, json=body, headers=headers,
                                                timeout=self.timeout_s)
            except requests.Timeout:
                last_problem = f"no reply within {self.timeout_s:g} s"
            except requests.ConnectionError as error:
                last_problem = f"connection failed ({_excerpt(str(error), 200)})"
            else:
                status = response.status_code
                if status == 200:
                    try:
                        return parse_reply(response.json())
                    except ValueError as error:  # includes JSON decode errors
                        last_problem = f"unreadable 200 reply: {error}"
                elif status == 429 or status >= 500:
                    last_problem = f"HTTP {status}: {_excerpt(response.text)}"
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                else:
                    hint = _HINTS.get(status, "check the request settings")
                    raise ChatRequestError(
                        f"chat model {self.model!r} at {self.url} refused the request with HTTP "
                        f"{status}: {_excerpt(response.text)}; {hint}")
            if attempt < self.max_retries:
                self._pause(attempt, retry_after)
        raise ChatFailed(f"chat model {self.model!r} at {self.url} gave no usable reply after "
                         f"{self.max_retries + 1} attempts; last: {last_problem}")


class ReplyCache:
    """Replies on disk (SQLite), one committed row per request key."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")  # other processes can read while we write
            self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, "
                             "model TEXT NOT NULL, reply TEXT NOT NULL, created REAL NOT NULL)")
            self._db.commit()
        except sqlite3.DatabaseError as error:
            raise RuntimeError(f"the chat reply cache {self.path} is unreadable ({error}); "
                               f"delete it to start afresh") from error

    def get(self, key: str) -> ChatReply | None:
        row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return ChatReply.from_json(row[0]) if row else None

    def put(self, key: str, model: str, reply: ChatReply) -> None:
        with self._db:  # one transaction per reply: it is on disk whole or not at all
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?)",
                             (key, model, reply.to_json(), time.time()))

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ReplyCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class CompletionRun:
    """The outcome of ``complete_all``: a reply or the ``ChatFailed`` error, per job."""

    replies: dict[int, ChatReply | ChatFailed]
    cache_hits: int
    cache_misses: int


def complete_all(client: ChatClient, requests_: Iterable[ChatRequest], cache: ReplyCache, *,
                 concurrency: int = 8, total: int | None = None, progress: bool = True) -> CompletionRun:
    """Answer every request: from ``cache`` when there, else from ``client`` (``concurrency``
    threads), storing each new reply as it arrives.

    ``requests_`` is read lazily and at most ``4 * concurrency`` requests wait at a time, so
    the images of a large task are never all in memory. A ``ChatRequestError`` stops the run
    (the replies already received stay cached); a ``ChatFailed`` is recorded for its job.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    replies: dict[int, ChatReply | ChatFailed] = {}
    hits = misses = 0
    pending: dict[Future, tuple[int, str]] = {}
    bar = progress_bar(total=total, desc=f"{client.model} replies", unit="q", enabled=progress)

    def collect(done: Iterable[Future]) -> None:
        for future in done:
            job, key = pending.pop(future)
            try:
                reply = future.result()
            except ChatFailed as error:
                replies[job] = error
            else:
                cache.put(key, client.model, reply)
                replies[job] = reply
            bar.update(1)

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="chat")
    try:
        for request in requests_:
            if not request.png.startswith(PNG_SIGNATURE):
                raise ValueError(f"job {request.job}: the image is not a PNG (it starts with "
                                 f"{request.png[:8]!r}); the chat client sends image/png data URLs")
            key = request_key(client.model, request.prompt,
                              hashlib.sha256(request.png).hexdigest(), client.settings)
            cached = cache.get(key)
            if cached is not None:
                hits += 1
                replies[request.job] = cached
                bar.update(1)
                continue
            misses += 1
            pending[pool.submit(client.complete, request.prompt, request.png)] = (request.job, key)
            if len(pending) >= 4 * concurrency:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            collect(done)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
    return CompletionRun(replies=replies, cache_hits=hits, cache_misses=misses)


def iter_requests(items: Iterable[tuple[int, str, int]], image_png) -> Iterator[ChatRequest]:
    """Requests for (job, prompt, image index) items, reading each image once per run of
    consecutive items with the same image index (``image_png(index) -> bytes``)."""
    current: tuple[int, bytes] | None = None
    for job, prompt, index in items:
        if current is None or current[0] != index:
            current = (index, image_png(index))
        yield ChatRequest(job=job, prompt=prompt, png=current[1])


__all__ = ["ChatClient", "ChatFailed", "ChatReply", "ChatRequest", "ChatRequestError",
           "ChatSettings", "CompletionRun", "ReplyCache", "complete_all", "default_cache_path",
           "iter_requests", "request_key", "retry_after_seconds"]

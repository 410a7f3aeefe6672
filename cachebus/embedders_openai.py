"""An :class:`~cachebus.Embedder` for any OpenAI-compatible ``POST /v1/embeddings`` API.

``pip install 'cachebus[openai]'``. Built on the official ``openai`` SDK with ``base_url``,
so it talks to OpenAI, Azure OpenAI's v1 API (``https://<resource>.openai.azure.com/openai/v1/``),
vLLM (``vllm serve ... --task embed``), Hugging Face TEI, Ollama, LiteLLM and the like. The SDK
does the HTTP, auth headers and response parsing; this class adds what a cache-fronted
embedder needs around it, with the SDK's own retries turned off so they do not multiply:

* batching: at most ``max_batch_size`` inputs per request (OpenAI allows 2048);
* a concurrency limit: at most ``max_concurrency`` requests in flight per embedder, across
  every thread (sync) or task (async) using it;
* retries with exponential backoff and jitter on 429 (``Retry-After`` / ``retry-after-ms``
  honoured, capped at ``max_backoff``), 408, 409, 5xx, timeouts and connection errors; then
  one :class:`~cachebus.errors.EmbeddingProviderError` (``retriable=True``);
* a 4xx is not retried: :class:`~cachebus.errors.EmbeddingProviderError` with the status
  and the provider's own message;
* the API key stays inside the SDK client: never in a repr, an error or a log line.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from .errors import ConfigError, EmbeddingProviderError
from .integrations import require

require("openai", "openai", "cachebus.embedders_openai")

import openai  # noqa: E402

log = logging.getLogger("cachebus.embedders")

T = TypeVar("T")
_RETRY_STATUS = frozenset({408, 409, 429})
_NO_KEY = "unused"
"""Sent when no key is configured (a local vLLM or TEI without auth ignores it)."""


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, ``Retry-After`` in
    seconds or as an HTTP date), or ``None``."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _provider_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return str(exc.message)


class OpenAICompatibleEmbedder:
    """Embeddings from an OpenAI-compatible API; sync :meth:`embed`, async :meth:`aembed`.

    >>> embedder = OpenAICompatibleEmbedder("text-embedding-3-small")   # OPENAI_API_KEY
    >>> service = bus.embedding_service(embedder)          # the cache in front of it
    >>> local = OpenAICompatibleEmbedder("BAAI/bge-small-en-v1.5",
    ...                                  base_url="http://tei:8080/v1")   # no key needed

    ``model_version`` names the cache's keys with ``model``: change it (a new revision
    served under the same name) and old vectors are never served. The default is ``"1"``,
    with ``-d<N>`` appended when ``dimensions`` is set. ``api_key`` defaults to
    ``$OPENAI_API_KEY`` (none: a placeholder, for servers without auth). ``client`` /
    ``async_client`` take ready SDK clients instead (e.g. ``openai.AzureOpenAI``); their
    own retries are yours to turn off (``max_retries=0``).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        model_version: str | None = None,
        dimensions: int | None = None,
        max_batch_size: int = 2048,
        max_concurrency: int = 4,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: float = 60.0,
        default_headers: dict[str, str] | None = None,
        client: openai.OpenAI | None = None,
        async_client: openai.AsyncOpenAI | None = None,
    ) -> None:
        if not model:
            raise ConfigError("OpenAICompatibleEmbedder needs a model name")
        if max_batch_size < 1 or max_concurrency < 1 or max_retries < 0:
            raise ConfigError("max_batch_size and max_concurrency must be >= 1, max_retries >= 0")
        if dimensions is not None and dimensions < 1:
            raise ConfigError(f"dimensions must be positive, got {dimensions}")
        self.model = model
        self.model_version = model_version or ("1" if dimensions is None else f"1-d{dimensions}")
        self.dimensions = dimensions
        self.max_batch_size = max_batch_size
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        key = api_key or os.environ.get("OPENAI_API_KEY") or _NO_KEY
        options: dict[str, Any] = {
            "api_key": key,
            "base_url": base_url,
            "max_retries": 0,  # ours, not the SDK's, so they do not multiply
            "timeout": timeout,
            "default_headers": default_headers,
        }
        self._client = client or openai.OpenAI(**options)
        self._make_async: Callable[[], openai.AsyncOpenAI] = (
            (lambda: async_client)
            if async_client is not None
            else (lambda: openai.AsyncOpenAI(**options))
        )
        self._async_clients: dict[int, tuple[asyncio.AbstractEventLoop, openai.AsyncOpenAI]] = {}
        self.base_url = str(self._client.base_url).rstrip("/")
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._async_slots: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = {}
        self._lock = threading.Lock()
        self.requests = 0
        """Requests sent (every attempt), for tests and metrics."""

    def __repr__(self) -> str:
        return (
            f"OpenAICompatibleEmbedder(model={self.model!r}, model_version="
            f"{self.model_version!r}, base_url={self.base_url!r}, api_key='***')"
        )

    # ------------------------------------------------------------------ batching
    def _batches(self, texts: Sequence[str]) -> list[list[str]]:
        items = list(texts)
        for t in items:
            if not isinstance(t, str):
                raise TypeError(f"texts must be strings, got {type(t).__name__}")
        n = self.max_batch_size
        return [items[i : i + n] for i in range(0, len(items), n)]

    def _params(self, batch: list[str]) -> dict[str, Any]:
        params: dict[str, Any] = {"input": batch, "model": self.model, "encoding_format": "float"}
        if self.dimensions is not None:
            params["dimensions"] = self.dimensions
        return params

    @staticmethod
    def _parse(response: Any, n: int) -> npt.NDArray[np.float32]:
        data = sorted(response.data, key=lambda d: d.index)
        if len(data) != n:
            raise EmbeddingProviderError(
                f"the embeddings API returned {len(data)} embeddings for {n} inputs"
            )
        return np.asarray([d.embedding for d in data], dtype=np.float32)

    # ------------------------------------------------------------------ retries
    def _classify(
        self, exc: Exception, attempt: int
    ) -> tuple[EmbeddingProviderError, float | None]:
        """The error to raise, and the delay before a retry (``None``: do not retry)."""
        where = f"the embeddings API at {self.base_url} (model {self.model!r})"
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            text = _provider_message(exc)
            retriable = status in _RETRY_STATUS or status >= 500
            if not retriable:
                return (
                    EmbeddingProviderError(
                        f"{where} refused the request: HTTP {status}: {text}",
                        status=status,
                        attempts=attempt,
                    ),
                    None,
                )
            error = EmbeddingProviderError(
                f"{where} failed after {attempt} attempt(s): HTTP {status}: {text}",
                status=status,
                retriable=True,
                attempts=attempt,
            )
            hint = _retry_after(exc.response.headers)
        elif isinstance(exc, openai.APIConnectionError):
            error = EmbeddingProviderError(
                f"{where} failed after {attempt} attempt(s): {type(exc).__name__}: {exc.message}",
                retriable=True,
                attempts=attempt,
            )
            hint = None
        else:
            raise exc
        if attempt > self.max_retries:
            return error, None
        if hint is None:
            hint = self.backoff * 2 ** (attempt - 1) * (0.5 + random.random() / 2)
        return error, min(hint, self.max_backoff)

    def _log_retry(self, error: EmbeddingProviderError, delay: float) -> None:
        log.warning(
            "cachebus embedder %s: HTTP %s, retrying in %.2f s (attempt %d of %d)",
            self.model,
            error.status if error.status is not None else "-",
            delay,
            error.attempts,
            self.max_retries + 1,
        )

    # ------------------------------------------------------------------ sync
    def _send(self, batch: list[str]) -> npt.NDArray[np.float32]:
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._slots:
                    with self._lock:
                        self.requests += 1
                    response = self._client.embeddings.create(**self._params(batch))
                return self._parse(response, len(batch))
            except (openai.APIStatusError, openai.APIConnectionError) as exc:
                error, delay = self._classify(exc, attempt)
                if delay is None:
                    raise error from None
                self._log_retry(error, delay)
                time.sleep(delay)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One vector per text, in order: batches of ``max_batch_size``, up to
        ``max_concurrency`` in flight."""
        batches = self._batches(texts)
        if not batches:
            return np.zeros((0, self.dimensions or 0), dtype=np.float32)
        if len(batches) == 1:
            return self._send(batches[0])
        with ThreadPoolExecutor(min(len(batches), self.max_concurrency)) as pool:
            parts = list(pool.map(self._send, batches))
        return np.concatenate(parts)

    # ------------------------------------------------------------------ async
    def _per_loop(
        self, store: dict[int, tuple[asyncio.AbstractEventLoop, T]], make: Callable[[], T]
    ) -> T:
        # asyncio objects belong to one event loop: one per loop, dropped with it.
        loop = asyncio.get_running_loop()
        found = store.get(id(loop))
        if found is None or found[0] is not loop:
            for key, (other, _) in list(store.items()):
                if other.is_closed():
                    del store[key]
            found = (loop, make())
            store[id(loop)] = found
        return found[1]

    async def _asend(self, batch: list[str]) -> npt.NDArray[np.float32]:
        client = self._per_loop(self._async_clients, self._make_async)
        slots = self._per_loop(self._async_slots, lambda: asyncio.Semaphore(self.max_concurrency))
        attempt = 0
        while True:
            attempt += 1
            try:
                async with slots:
                    with self._lock:
                        self.requests += 1
                    response = await client.embeddings.create(**self._params(batch))
                return self._parse(response, len(batch))
            except (openai.APIStatusError, openai.APIConnectionError) as exc:
                error, delay = self._classify(exc, attempt)
                if delay is None:
                    raise error from None
                self._log_retry(error, delay)
                await asyncio.sleep(delay)

    async def aembed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """The asyncio :meth:`embed` (same batching, limit and retries)."""
        batches = self._batches(texts)
        if not batches:
            return np.zeros((0, self.dimensions or 0), dtype=np.float32)
        parts: list[npt.NDArray[np.float32]] = await asyncio.gather(
            *(self._asend(b) for b in batches)
        )
        return np.concatenate(parts)

    def as_async(self) -> AsyncOpenAICompatibleView:
        """This embedder as an :class:`~cachebus.AsyncEmbedder` (``embed`` is
        :meth:`aembed`), for ``AsyncCacheBus.embedding_service``."""
        return AsyncOpenAICompatibleView(self)

    def close(self) -> None:
        """Close the sync client's connections."""
        self._client.close()

    async def aclose(self) -> None:
        """Close the async client of the running event loop (if one was made)."""
        found = self._async_clients.pop(id(asyncio.get_running_loop()), None)
        if found is not None:
            await found[1].close()


class AsyncOpenAICompatibleView:
    """:class:`OpenAICompatibleEmbedder` with an awaitable ``embed`` (an
    :class:`~cachebus.AsyncEmbedder`)."""

    def __init__(self, embedder: OpenAICompatibleEmbedder) -> None:
        self.embedder = embedder
        self.model = embedder.model
        self.model_version = embedder.model_version

    def embed(self, texts: Sequence[str]) -> Awaitable[npt.NDArray[np.float32]]:
        return self.embedder.aembed(texts)

    def __repr__(self) -> str:
        return f"{self.embedder!r}.as_async()"


__all__ = ["AsyncOpenAICompatibleView", "OpenAICompatibleEmbedder"]

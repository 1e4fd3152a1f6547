"""``rewardlab serve MODEL``: a local model behind an OpenAI-compatible HTTP API.

Endpoints (enough for LLM judges and most OpenAI clients):

- ``GET /v1/models``: the one served model;
- ``POST /v1/chat/completions``: ``{model, messages, max_tokens?, temperature?, n?}`` ->
  an OpenAI-shaped ``chat.completion`` with ``usage``. The messages go through the
  tokenizer's chat template (or, for a tokenizer without one, ``role: content`` lines and a
  final ``assistant:``); ``temperature`` 0 is greedy decoding; only ``n`` = 1.

Errors are OpenAI-shaped too (``{"error": {"message", "type", "param", "code"}}``): 400 for a
bad request, 404 for an unknown model or path. The server binds to 127.0.0.1 by default and
generates one request at a time (a lock around the model); connections are handled by
threads. Standard library only (``http.server``).
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from rewardlab.errors import RewardlabError

MAX_BODY = 4 * 1024 * 1024


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


class ModelServer:
    """A running server (``serve`` returns it): ``url`` is the base URL for clients
    (``http://127.0.0.1:PORT/v1``); ``shutdown()`` stops it. Also a context manager."""

    def __init__(
        self,
        model_name: str,
        model: Any,
        tokenizer: Any,
        host: str,
        port: int,
        max_tokens_limit: int,
    ) -> None:
        self.model_name = model_name
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens_limit = max_tokens_limit
        self.requests = 0  # chat-completion requests received
        self._generate_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name=f"serve {model_name}", daemon=True
        )

    @property
    def host(self) -> str:
        return str(self.httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def start(self) -> ModelServer:
        self.thread.start()
        return self

    def shutdown(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join(timeout=10)
        self.httpd.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ----------------------------------------------------------------------- the API

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": self.model_name, "object": "model", "created": 0, "owned_by": "rewardlab"}
            ],
        }

    def chat(self, body: Any) -> dict[str, Any]:
        with self._count_lock:
            self.requests += 1
        request = _check_chat_request(body, self.model_name, self.max_tokens_limit)
        prompt = self.render(request["messages"])
        with self._generate_lock:
            text, prompt_tokens, completion_tokens, finish = self._generate(
                prompt, request["max_tokens"], request["temperature"]
            )
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text for ``messages``: the chat template, or plain ``role: content``
        lines when the tokenizer has none."""
        if getattr(self.tokenizer, "chat_template", None):
            return str(
                self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            )
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join([*lines, "assistant:"])

    def _generate(
        self, prompt: str, max_tokens: int, temperature: float
    ) -> tuple[str, int, int, str]:
        from rewardlab.rollout.hf import SamplingParams, decode_completions, generate

        params = SamplingParams(
            n=1,
            temperature=temperature if temperature > 0 else 1.0,
            max_new_tokens=max_tokens,
            greedy=temperature == 0,
        )
        batch = generate(self.model, self.tokenizer, [prompt], params)
        (text,) = decode_completions(self.tokenizer, batch)
        prompt_tokens = int(batch.prompt_mask.sum())
        completion_tokens = int(batch.completion_mask.sum())
        finish = "length" if bool(batch.truncated[0]) else "stop"
        return text, prompt_tokens, completion_tokens, finish


def _check_chat_request(body: Any, served: str, limit: int) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _BadRequest(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != served:
        raise _BadRequest(404, f"model '{model}' is not served here; this server serves '{served}'", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest(400, "'messages' must be a non-empty list", "messages")
    for i, message in enumerate(messages):
        ok = (
            isinstance(message, dict)
            and message.get("role") in ("system", "user", "assistant")
            and isinstance(message.get("content"), str)
        )
        if not ok:
            raise _BadRequest(
                400,
                f"messages[{i}] must be {{role: system|user|assistant, content: string}}",
                "messages",
            )
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 64))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= limit:
        raise _BadRequest(400, f"'max_tokens' must be an integer in [1, {limit}]", "max_tokens")
    temperature = body.get("temperature", 1.0)
    if (
        not isinstance(temperature, (int, float))
        or isinstance(temperature, bool)
        or not 0 <= temperature <= 2
    ):
        raise _BadRequest(400, "'temperature' must be a number in [0, 2]", "temperature")
    if body.get("n", 1) != 1:
        raise _BadRequest(400, "only n = 1 is supported", "n")
    if body.get("stream"):
        raise _BadRequest(400, "streaming is not supported", "stream")
    return {
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "max_tokens": max_tokens,
        "temperature": float(temperature),
    }


def _handler_for(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "rewardlab-serve"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the CLI prints one line per request itself if asked

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, server.models())
            else:
                self._error(_BadRequest(404, f"no such path: GET {self.path}"))

        def do_POST(self) -> None:
            try:
                raw = self._drain()
                if self.path.rstrip("/") != "/v1/chat/completions":
                    raise _BadRequest(404, f"no such path: POST {self.path}")
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    raise _BadRequest(400, "the request body is not JSON") from None
                self._send(200, server.chat(body))
            except _BadRequest as err:
                self._error(err)
            except Exception as err:  # noqa: BLE001 - a generation bug: report it, keep serving
                self._error(_BadRequest(500, f"generation failed: {type(err).__name__}: {err}"))

        def _drain(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.close_connection = True
                raise _BadRequest(413, "request body too large")
            return self.rfile.read(length) if length else b""

        def _error(self, err: _BadRequest) -> None:
            kind = "invalid_request_error" if err.status < 500 else "server_error"
            payload = {
                "error": {"message": str(err), "type": kind, "param": err.param, "code": None}
            }
            self._send(err.status, payload)

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    seed: int = 0,
    max_tokens_limit: int = 1024,
    allow_remote: bool = False,
) -> ModelServer:
    """Load ``model_name`` (``builtin:tiny``, ``smollm2-135m``, a model folder, a hub id) and
    serve it on ``host:port`` (port 0: any free port; see ``.url``) from a background thread.
    A non-loopback ``host`` needs ``allow_remote=True``: the API has no authentication."""
    if not is_loopback(host) and not allow_remote:
        raise RewardlabError(
            f"--host: {host} is not a loopback address and the server has no authentication; "
            "serve on 127.0.0.1, or pass --allow-remote if you really mean to expose it"
        )
    from rewardlab.config import ModelConfig
    from rewardlab.models.loading import load_policy

    model, tokenizer = load_policy(ModelConfig(name=model_name), seed=seed)
    model.eval()
    try:
        server = ModelServer(model_name, model, tokenizer, host, port, max_tokens_limit)
    except OSError as err:
        raise RewardlabError(f"--port: cannot listen on {host}:{port} ({err.strerror})") from None
    return server.start()

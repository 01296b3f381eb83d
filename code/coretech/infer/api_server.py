"""The process ``coretech api`` serves: LLaMA-Factory's own OpenAI-compatible app behind a request guard.

``llamafactory-cli api`` passes a request's ``max_tokens`` straight to generation: ``max_tokens: 600``
generated 600 tokens although the recipe caps answers at 256, and ``max_tokens: -5`` reached
``model.generate`` and came back as an HTTP 500 with a traceback. Serving is still LLaMA-Factory's
(``create_app(ChatModel(recipe))``: routes, protocol, API key, engines); we only put an ASGI
middleware in front of ``/v1/chat/completions`` that answers a bad generation setting with a 400
naming the field, and lowers ``max_tokens`` to the recipe's ``max_new_tokens``. Type errors (a string
for ``max_tokens``) are already 422s from LLaMA-Factory's pydantic models.

Run as ``python -m coretech.infer.api_server RESOLVED.yaml`` (``coretech api`` does); host and port come
from API_HOST / API_PORT as in LLaMA-Factory.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from coretech.log import get_logger

log = get_logger(__name__)

COMPLETIONS_PATH = "/v1/chat/completions"
# More choices per request multiply the work of one request; a client wanting more sends more requests.
MAX_CHOICES = 8
# A chat request is a few KB; a body this large is refused before it is parsed.
MAX_BODY_BYTES = 8 * 1024 * 1024

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_generation_request(body: dict[str, Any], cap: int) -> str | None:
    """Why the request's generation settings are unusable (None when fine); lowers ``max_tokens`` to ``cap``."""
    max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return f"max_tokens must be a positive integer, got {max_tokens!r}"
        body["max_tokens"] = min(max_tokens, cap)
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CHOICES):
        return f"n must be an integer from 1 to {MAX_CHOICES}, got {n!r}"
    checks = (
        ("temperature", lambda v: 0 <= v <= 2, "a number from 0 to 2"),
        ("top_p", lambda v: 0 < v <= 1, "a number in (0, 1]"),
        ("presence_penalty", lambda v: v > 0, "a positive number (LLaMA-Factory's repetition penalty)"),
    )
    for key, valid, expected in checks:
        value = body.get(key)
        if value is not None and (not _is_number(value) or not valid(value)):
            return f"{key} must be {expected}, got {value!r}"
    return None


async def _reply(send: Send, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def guard_generation(app: ASGIApp, cap: int) -> ASGIApp:
    """Wrap ``app`` so every chat completion request is checked and capped before LLaMA-Factory sees it."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith(COMPLETIONS_PATH):
            await app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _reply(send, 413, f"request body over {MAX_BODY_BYTES} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None  # LLaMA-Factory's FastAPI answers malformed JSON with a 422 itself
        if isinstance(data, dict):
            problem = check_generation_request(data, cap)
            if problem is not None:
                await _reply(send, 400, problem)
                return
            body = json.dumps(data).encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()  # after the body: the disconnect, when it comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app({**scope, "headers": headers}, replay, send)

    return guarded


def generation_cap(values: dict[str, Any]) -> int:
    """The recipe's ``max_new_tokens``, else LLaMA-Factory's own default for it."""
    from llamafactory.hparams import GeneratingArguments

    cap = values.get("max_new_tokens", GeneratingArguments().max_new_tokens)
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {cap!r}")
    return cap


def build_app(values: dict[str, Any]) -> ASGIApp:
    """LLaMA-Factory's app for the recipe ``values``, guarded; loads the model."""
    from llamafactory.api.app import create_app
    from llamafactory.chat import ChatModel

    cap = generation_cap(values)
    app = create_app(ChatModel(dict(values)))
    log.info("generation capped at max_new_tokens=%d per request", cap)
    return guard_generation(app, cap)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m coretech.infer.api_server RESOLVED_API.yaml", file=sys.stderr)
        return 2
    values = yaml.safe_load(Path(argv[0]).read_text(encoding="utf-8"))
    app = build_app(values)
    host = os.getenv("API_HOST", "127.0.0.1")
    port = int(os.getenv("API_PORT", "8000"))
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())

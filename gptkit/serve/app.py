"""The ASGI app: OpenAI routes over an `Engine`, the chat page, health, auth and limits.

    GET /  (chat page)   GET /health   GET /v1/models
    POST /v1/completions   POST /v1/chat/completions   (`stream: true` -> server-sent events)
`create_app(engine, ...)` builds it; the engine thread starts and stops with the app's lifespan.
Every error is OpenAI-style JSON (schema.ApiError); the `_Guard` middleware answers 401 (API
key) and 413 (body size) before a body is parsed.
"""

from __future__ import annotations

import contextlib
import hmac
import importlib
import json
import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException

from gptkit.errors import GptkitError
from gptkit.serve.engine import Engine, EngineBusy
from gptkit.serve.reply import Reply
from gptkit.serve.schema import ApiError, ChatRequest, CompletionRequest, validation_error
from gptkit.serve.sequence import Job, Params, Sequence

PAGE = Path(__file__).parent / "static" / "chat.html"
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
log = logging.getLogger("gptkit.serve")


def create_app(engine: Engine, *, model_id: str, api_key: str | None = None,
               max_tokens: int = 256, max_body_bytes: int = 1 << 20) -> FastAPI:  # fmt: skip
    """The server's app: routes over `engine`, which it starts and closes."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.close()

    app = FastAPI(title="gptkit", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes)
    _add_error_handlers(app)
    _add_info_routes(app, engine, model_id)
    limits = {"max_tokens": max_tokens}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        _check_model(body.model, model_id)
        prompts = _prompt_ids(body.prompt, engine)
        logprobs = body.logprobs
        params = _params(body, limits, logprobs, {engine.tok.eot_id}, DEFAULT_COMPLETION_TOKENS)
        return await _answer(engine, body, prompts, params, chat=False, model_id=model_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        _check_model(body.model, model_id)
        chat = _chat_module(engine.tok)
        messages = [{"role": "system" if m.role == "developer" else m.role,
                     "content": m.text()} for m in body.messages]  # fmt: skip
        try:
            prompt = list(chat.render_prompt(engine.tok, messages))
        except (GptkitError, ValueError) as e:  # a conversation the template cannot render
            raise ApiError(400, f"`messages`: {e}", param="messages") from None
        _check_length(prompt, engine)
        stops = {engine.tok.eot_id, *chat.stop_ids(engine.tok)}
        body.max_tokens = body.max_completion_tokens or body.max_tokens
        top = (body.top_logprobs or 0) if body.logprobs else None
        params = _params(body, limits, top, stops, max_tokens)
        return await _answer(engine, body, [prompt], params, chat=True, model_id=model_id)

    return app


def _add_info_routes(app: FastAPI, engine: Engine, model_id: str):
    """The chat page, /health (both open without a key) and /v1/models."""

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, **engine.load()}

    @app.get("/v1/models")
    async def models():
        card = {"id": model_id, "object": "model", "created": 0, "owned_by": "gptkit",
                "context_length": engine.context}  # fmt: skip
        return {"object": "list", "data": [card]}


def _chat_module(tok):
    """gptkit.data.chat when it exists and the tokenizer has a chat template, else a 400."""
    try:
        chat = importlib.import_module("gptkit.data.chat")
        if chat.has_chat(tok):
            return chat
    except ImportError:
        pass
    raise ApiError(400, "model has no chat template; use /v1/completions with a plain prompt",
                   code="no_chat_template")  # fmt: skip


def _prompt_ids(prompt, engine: Engine) -> list[list[int]]:
    """A prompt field (text, ids, or texts) -> checked token ids per prompt."""
    tok = engine.tok
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        bad = [i for i in prompt if not 0 <= i < engine.model.config.vocab_size]
        if bad:
            raise ApiError(400, f"`prompt`: token id {bad[0]} is outside the vocabulary "
                           f"[0, {engine.model.config.vocab_size})", param="prompt")  # fmt: skip
        ids = [list(prompt)]
    else:
        texts = [prompt] if isinstance(prompt, str) else prompt
        ids = [tok.encode(t) or [tok.eot_id] for t in texts]  # "" starts a new document
    for p in ids:
        _check_length(p, engine)
    return ids


def _check_length(prompt: list[int], engine: Engine):
    if len(prompt) >= engine.context:
        raise ApiError(400, f"the prompt has {len(prompt)} tokens; this model's context is "
                       f"{engine.context} tokens, so at most {engine.context - 1} fit",
                       param="prompt", code="context_length_exceeded")  # fmt: skip


def _check_model(name: str | None, model_id: str):
    if name is not None and name != model_id:
        raise ApiError(404, f"model {name!r} does not exist; this server serves {model_id!r} "
                       "(see GET /v1/models)", param="model", code="model_not_found")  # fmt: skip


def _params(body, limits: dict, logprobs, stop_ids: set, default_tokens: int) -> Params:
    """Sampling settings of a validated request, checked against the server's limits."""
    if body.max_tokens is not None and body.max_tokens > limits["max_tokens"]:
        raise ApiError(400, f"`max_tokens` {body.max_tokens} is above this server's limit of "
                       f"{limits['max_tokens']}", param="max_tokens")  # fmt: skip
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return Params(
        max_tokens=body.max_tokens or min(default_tokens, limits["max_tokens"]),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=tuple(stop), stop_ids=frozenset(stop_ids), logprobs=logprobs, seed=body.seed,
    )  # fmt: skip


async def _answer(engine: Engine, body, prompts, params: Params, *, chat: bool, model_id: str):
    """Queue the request's sequences; stream their events or wait for all of them."""
    seqs = [Sequence(prompt=p, params=params, index=i * body.n + j)
            for i, p in enumerate(prompts) for j in range(body.n)]  # fmt: skip
    if len(seqs) > engine.max_batch:
        raise ApiError(400, f"{len(seqs)} choices (n x prompts) are more than this server "
                       f"decodes at once ({engine.max_batch})", param="n")  # fmt: skip
    job = Job(seqs)
    try:
        engine.submit(job)
    except EngineBusy as e:
        raise ApiError(429, f"the server is busy ({e}); retry shortly", type_="rate_limit_error",
                       code="queue_full", headers={"Retry-After": "1"}) from None  # fmt: skip
    reply = Reply(chat=chat, model=model_id, tok=engine.tok,
                  prompt_tokens=sum(map(len, prompts)), choices=len(seqs))  # fmt: skip
    if body.stream:
        usage = bool((getattr(body, "stream_options", None) or {}).get("include_usage"))
        return EventSourceResponse(_stream(job, reply, usage), ping=15)
    try:
        while not reply.done():
            ev = await job.events.get()
            if ev.error:
                raise ApiError(500, ev.error, type_="server_error", code="engine_error")
            reply.add(ev)
    finally:
        job.cancel()  # a handler that ends early (client gone, error) frees its rows
    return reply.final()


async def _stream(job: Job, reply: Reply, usage: bool):
    """Server-sent events: one chunk per new text, then usage if asked, then [DONE]."""
    started = set()
    try:
        while not reply.done():
            ev = await job.events.get()
            if ev.error:
                yield {"data": json.dumps(ApiError(500, ev.error, type_="server_error").body())}
                return
            reply.add(ev)
            if ev.text or ev.finish_reason or ev.logprob is not None or ev.index not in started:
                yield {"data": json.dumps(reply.chunk(ev, first=ev.index not in started))}
                started.add(ev.index)
        if usage:
            yield {"data": json.dumps(reply.usage_chunk())}
        yield {"data": "[DONE]"}
    finally:
        job.cancel()  # the client went away mid-stream: the engine drops its rows next step


def _add_error_handlers(app: FastAPI):
    """Every error as OpenAI-style JSON: ours, validation, 404/405, and unexpected ones."""

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        err = validation_error(list(e.errors()))
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        msg = f"{request.method} {request.url.path}: {e.detail}"
        body = ApiError(e.status_code, msg, type_=kind).body()
        return JSONResponse(body, status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request, e: Exception):
        log.exception("request failed")
        body = ApiError(500, f"internal error ({type(e).__name__})", type_="server_error").body()
        return JSONResponse(body, status_code=500)


class _Guard:
    """ASGI middleware: API key on /v1 (401) and a body-size limit (413), before any parsing."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.limit = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key and scope["path"].startswith("/v1") and not self._authorized(headers):
            return await _send_error(scope, receive, send, ApiError(
                401, "missing or wrong API key; send 'Authorization: Bearer KEY'",
                code="invalid_api_key"))  # fmt: skip
        too_big = ApiError(413, f"the request body is over {self.limit} bytes",
                           code="request_too_large")  # fmt: skip
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            return await _send_error(scope, receive, send, too_big)
        body, more = b"", True
        while more:  # read the body here, counting, so a chunked upload cannot exceed it either
            message = await receive()
            if message["type"] != "http.request":
                return  # the client disconnected before sending its body
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await _send_error(scope, receive, send, too_big)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then: wait for the disconnect, as the app expects

        await self.app(scope, replay, send)

    def _authorized(self, headers: dict) -> bool:
        given = headers.get("authorization", "")
        token = given[7:] if given[:7].lower() == "bearer " else ""
        return hmac.compare_digest(token.encode(), self.api_key.encode())


async def _send_error(scope, receive, send, e: ApiError):
    await JSONResponse(e.body(), status_code=e.status)(scope, receive, send)

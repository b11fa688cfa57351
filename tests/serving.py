"""A real `gptkit serve` app on 127.0.0.1 in a background thread, for the serve tests.

`start(run)` loads the run, starts uvicorn on a free loopback port and returns a handle with the
url, the engine and the model; `paused(engine)` holds the engine before its next decode step,
so a test can line requests up deterministically (no sleeps).
"""

import contextlib
import socket
import sys
import threading
import time
import types
from dataclasses import dataclass

import httpx
import uvicorn

from gptkit.commands.serve import load
from gptkit.serve.app import create_app
from gptkit.serve.engine import Engine

KEY = "test-key"


@dataclass
class Server:
    url: str
    engine: Engine
    model: object
    tok: object
    uvicorn: uvicorn.Server
    thread: threading.Thread

    def client(self, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {KEY}", **kw.pop("headers", {})}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def stop(self):
        self.uvicorn.should_exit = True
        self.thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run, **limits) -> Server:
    model, tok = load(str(run), "cpu")
    engine = Engine(model, tok, max_batch=limits.pop("max_batch", 4), queue_size=4)
    app = create_app(engine, model_id="tiny", api_key=KEY, max_tokens=64, max_body_bytes=16384)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    return Server(f"http://127.0.0.1:{port}", engine, model, tok, server, thread)


@contextlib.contextmanager
def paused(engine: Engine):
    """Hold the engine thread before its next decode step; yields an Event set once it waits."""
    gate, waiting = threading.Event(), threading.Event()
    step = engine._step

    def held():
        waiting.set()
        gate.wait(20)
        step()

    engine._step = held
    try:
        yield waiting
    finally:
        del engine._step
        gate.set()


def wait_for(predicate, what: str, seconds: float = 10):
    """Poll `predicate` (bounded) until it holds."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def fake_chat(monkeypatch, *, has_chat=True):
    """A stand-in gptkit.data.chat: 'r:content' lines (r: the role's initial), the reply ends
    at a newline; short, as the tiny model's context is 32 tokens."""
    mod = types.ModuleType("gptkit.data.chat")
    mod.has_chat = lambda tok: has_chat
    mod.render_prompt = lambda tok, messages: tok.encode(
        "".join(f"{m['role'][0]}:{m['content']}\n" for m in messages) + "a:"
    )
    mod.stop_ids = lambda tok: tok.encode("\n")
    monkeypatch.setitem(sys.modules, "gptkit.data.chat", mod)
    return mod

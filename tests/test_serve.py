"""`gptkit serve`: the OpenAI API over loopback with the official client and httpx, batching
(a batched row decodes exactly as alone), the limits (401, 429, disconnect) and the chat page.

One server on the shared tiny byte-level run (context 32) serves the whole module.
"""

import json
import os
import shutil
import subprocess
import sys
import threading

import httpx
import openai
import pytest
import torch
from serving import KEY, fake_chat, free_port, paused, start, wait_for

from gptkit.model.generate import generate


@pytest.fixture(scope="module")
def server(shared_tiny_run):
    s = start(shared_tiny_run)
    yield s
    s.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def alone(server, prompt: str, n: int) -> str:
    """The greedy continuation `generate` gives for the prompt on its own."""
    idx = torch.tensor([server.tok.encode(prompt)])
    with torch.no_grad():
        cols = list(generate(server.model, idx, max_new_tokens=n, temperature=0))
    return server.tok.decode(torch.cat(cols).tolist())


def test_health_and_models(server, client):
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_completion_is_the_greedy_continuation_with_usage(server, client):
    r = client.completions.create(model="tiny", prompt="Once upon", max_tokens=8, temperature=0)
    assert r.choices[0].text == alone(server, "Once upon", 8)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (9, 8, 17)


def test_streaming_chunks_add_up_and_end_with_done(server, client):
    full = alone(server, "The cat", 10)
    stream = client.completions.create(
        model="tiny", prompt="The cat", max_tokens=10, temperature=0, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == full
    assert chunks[-1].choices[0].finish_reason == "length"
    body = {"model": "tiny", "prompt": "The cat", "max_tokens": 3, "stream": True}
    with server.client() as http:
        lines = http.post("/v1/completions", json=body).text.strip().splitlines()
    assert lines[-1] == "data: [DONE]" and json.loads(lines[0][6:])["object"] == "text_completion"


def test_batched_rows_equal_the_same_requests_alone(server):
    prompts = ["a", "Once upon a time", "The quick brown", "Hello, world! How"]
    results = {}

    def ask(prompt):
        with server.client() as http:
            body = {"prompt": prompt, "max_tokens": 12, "temperature": 0}
            results[prompt] = http.post("/v1/completions", json=body).json()

    with paused(server.engine) as waiting:  # the first is mid-flight when the others join
        threads = [threading.Thread(target=ask, args=(prompts[0],))]
        threads[0].start()
        waiting.wait(10)
        threads += [threading.Thread(target=ask, args=(p,)) for p in prompts[1:]]
        for t in threads[1:]:
            t.start()
        wait_for(lambda: server.engine.load()["queued"] == 3, "three queued requests")
    for t in threads:
        t.join(30)
    assert server.engine.stats["peak_batch"] == 4
    for p in prompts:
        assert results[p]["choices"][0]["text"] == alone(server, p, 12), p


def test_stop_seed_n_and_logprobs(server, client):
    full = alone(server, "It was", 12)
    stop = full[4:6]
    r = client.completions.create(prompt="It was", max_tokens=12, temperature=0, stop=[stop],
                                  model="tiny")  # fmt: skip
    assert r.choices[0].text == full[: full.find(stop)] and r.choices[0].finish_reason == "stop"
    kw = dict(model="tiny", prompt="It was", max_tokens=6, temperature=1.0, seed=7, n=2)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices] and len(a.choices) == 2
    assert a.usage.completion_tokens == 12
    r = client.completions.create(model="tiny", prompt="It", max_tokens=4, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == 4 and all(len(t) == 3 for t in lp.top_logprobs)
    assert all(v <= 0 for v in lp.token_logprobs)


def test_api_key_is_required(server):
    body = {"prompt": "hi", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(server.url + "/v1/completions", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()


def test_full_queue_answers_429_with_retry_after(server):
    codes = []

    def ask():
        with server.client() as http:
            codes.append(http.post("/v1/completions", json={"prompt": "x"}).status_code)

    with paused(server.engine) as waiting:
        threads = [threading.Thread(target=ask) for _ in range(5)]
        threads[0].start()
        waiting.wait(10)  # one request decoding, then four fill the queue
        for t in threads[1:]:
            t.start()
        wait_for(lambda: server.engine.load()["queued"] == 4, "a full queue")
        with server.client() as http:
            r = http.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
    for t in threads:
        t.join(30)
    assert codes == [200] * 5


def test_client_that_disconnects_frees_its_row(server):
    engine = server.engine
    before = engine.stats["cancelled"]
    body = {"prompt": "hi", "max_tokens": 29, "stream": True}
    with paused(engine) as waiting:
        with server.client() as http, http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            waiting.wait(10)
            row = engine.rows[0]
        wait_for(lambda: row.cancelled, "the server to see the disconnect")
    wait_for(lambda: engine.load()["active"] == 0, "the row to be freed")
    assert engine.stats["cancelled"] == before + 1 and row.count <= 2


def test_chat_without_a_template_is_a_clear_400(server, client, monkeypatch):
    fake_chat(monkeypatch, has_chat=False)
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])


def test_chat_completion_streams_and_stops_at_the_turn_end(server, client, monkeypatch):
    fake_chat(monkeypatch)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                       temperature=0, logprobs=True, top_logprobs=2)  # fmt: skip
    text = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant" and "\n" not in text
    assert r.choices[0].finish_reason in ("stop", "length")
    assert all(len(t.top_logprobs) == 2 for t in r.choices[0].logprobs.content)
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                            temperature=0, stream=True)  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text


def test_gptkit_serve_command_starts_binds_loopback_and_takes_the_env_key(shared_tiny_run):
    port = free_port()
    env = {**os.environ, "GPTKIT_API_KEY": "env-key"}
    cmd = [sys.executable, "-m", "gptkit", "serve", str(shared_tiny_run), "--port", str(port),
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(url) or proc.poll() is not None, "gptkit serve to start", 60)
        assert proc.poll() is None, proc.stderr.read()
        assert httpx.get(url + "/v1/models").status_code == 401
        r = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer env-key"})
        assert r.json()["data"][0]["id"] == "run"
    finally:
        proc.terminate()
        proc.wait(20)


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_chat_page_streams_a_reply_in_a_real_browser(server, client, monkeypatch):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    fake_chat(monkeypatch)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(server.url + "/")
        page.fill("#api-key", KEY)
        page.fill("#max-tokens", "8")
        page.fill("#temperature", "0")
        page.fill("#input", "Hello there")
        page.click("#send")
        page.wait_for_function(
            "document.querySelector('#messages .assistant:last-child')?.dataset.done === '1'",
            timeout=20000,
        )
        reply = page.text_content("#messages .assistant:last-child .text")
        expected = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Hello there"}],
            max_tokens=8,
            temperature=0,
            top_p=0.95,
        )
        assert reply == expected.choices[0].message.content
        page.click("#reset")
        assert page.query_selector_all("#messages .message") == []
        browser.close()

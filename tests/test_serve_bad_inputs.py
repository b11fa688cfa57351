"""Bad-input battery for `gptkit serve`: each case gets a 4xx OpenAI-style error (never a
traceback, never a dead server) and a normal request right after it still succeeds."""

import json

import pytest
from serving import start

LONG = "x" * 100  # the tiny model's context is 32 tokens
OK = {"prompt": "hi", "max_tokens": 1}

# (id, method, path, body: dict | str (raw bytes) | None, status, code or None)
CASES = [
    ("malformed-json", "POST", "/v1/completions", '{"prompt": "hi",', 400, "invalid_json"),
    ("empty-body", "POST", "/v1/completions", "", 400, None),
    ("body-is-a-list", "POST", "/v1/completions", "[1, 2]", 400, None),
    ("no-prompt", "POST", "/v1/completions", {"max_tokens": 2}, 400, None),
    ("prompt-wrong-type", "POST", "/v1/completions", {"prompt": 12}, 400, None),
    ("prompt-empty-ids", "POST", "/v1/completions", {"prompt": []}, 400, None),
    ("token-id-outside-vocab", "POST", "/v1/completions", {"prompt": [5, 999999]}, 400, None),
    ("max-tokens-string", "POST", "/v1/completions", {**OK, "max_tokens": "ten"}, 400, None),
    ("max-tokens-float", "POST", "/v1/completions", {**OK, "max_tokens": 1.5}, 400, None),
    ("max-tokens-negative", "POST", "/v1/completions", {**OK, "max_tokens": -3}, 400, None),
    ("max-tokens-zero", "POST", "/v1/completions", {**OK, "max_tokens": 0}, 400, None),
    ("max-tokens-huge", "POST", "/v1/completions", {**OK, "max_tokens": 10**12}, 400, None),
    ("temperature-negative", "POST", "/v1/completions", {**OK, "temperature": -0.5}, 400, None),
    ("temperature-string", "POST", "/v1/completions", {**OK, "temperature": "hot"}, 400, None),
    ("top-p-zero", "POST", "/v1/completions", {**OK, "top_p": 0}, 400, None),
    ("top-p-above-one", "POST", "/v1/completions", {**OK, "top_p": 1.5}, 400, None),
    ("n-zero", "POST", "/v1/completions", {**OK, "n": 0}, 400, None),
    ("n-above-batch", "POST", "/v1/completions", {**OK, "n": 50}, 400, None),
    ("stop-number", "POST", "/v1/completions", {**OK, "stop": 5}, 400, None),
    ("stop-empty-string", "POST", "/v1/completions", {**OK, "stop": ""}, 400, None),
    ("stop-too-many", "POST", "/v1/completions", {**OK, "stop": list("abcde")}, 400, None),
    ("stream-not-bool", "POST", "/v1/completions", {**OK, "stream": "yes"}, 400, None),
    ("seed-negative", "POST", "/v1/completions", {**OK, "seed": -1}, 400, None),
    ("logprobs-too-many", "POST", "/v1/completions", {**OK, "logprobs": 99}, 400, None),
    ("echo-unsupported", "POST", "/v1/completions", {**OK, "echo": True}, 400, None),
    ("unknown-model", "POST", "/v1/completions", {**OK, "model": "gpt-9"}, 404,
     "model_not_found"),
    ("prompt-longer-than-context", "POST", "/v1/completions", {"prompt": LONG}, 400,
     "context_length_exceeded"),
    ("oversized-body", "POST", "/v1/completions", {"prompt": "y" * 20000}, 413,
     "request_too_large"),
    ("chat-empty-messages", "POST", "/v1/chat/completions", {"messages": []}, 400, None),
    ("chat-unknown-role", "POST", "/v1/chat/completions",
     {"messages": [{"role": "wizard", "content": "hi"}]}, 400, None),
    ("chat-no-content", "POST", "/v1/chat/completions", {"messages": [{"role": "user"}]}, 400,
     None),
    ("chat-messages-not-a-list", "POST", "/v1/chat/completions", {"messages": "hi"}, 400, None),
    ("chat-content-wrong-type", "POST", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": 7}]}, 400, None),
    ("unknown-route", "GET", "/v1/engines", None, 404, None),
    ("wrong-method", "GET", "/v1/completions", None, 405, None),
]  # fmt: skip


@pytest.fixture(scope="module")
def server(shared_tiny_run):
    s = start(shared_tiny_run)
    yield s
    s.stop()


@pytest.mark.parametrize("method,path,body,status,code", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_bad_request_is_an_openai_error_and_the_server_lives_on(
    server, method, path, body, status, code
):
    with server.client() as http:
        if isinstance(body, str):
            r = http.request(method, path, content=body.encode(),
                             headers={"Content-Type": "application/json"})  # fmt: skip
        else:
            r = http.request(method, path, json=body)
        assert r.status_code == status, r.text
        assert "Traceback" not in r.text
        err = r.json()["error"]
        assert err["message"] and err["type"] and "code" in err
        if code is not None:
            assert err["code"] == code
        after = http.post("/v1/completions", json=OK)
        assert after.status_code == 200 and json.loads(after.text)["choices"][0]["finish_reason"]

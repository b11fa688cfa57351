"""Load test of `gptkit serve` over loopback: 1, 4, 16 and 32 concurrent streaming clients.

    .venv/bin/python scripts/bench_serve.py [PATH] [--requests-per-client 2] [--max-tokens 64]
PATH defaults to runs/demo (`make demo`). The server runs in this process (uvicorn in a thread,
127.0.0.1 only) with --max-concurrency = the largest client count; each client streams its
requests one after another. Prints a markdown table: generated tokens/s over the whole level,
time to first token and request latency (p50 / p99), errors. Bounded: a level stops after
`--level-seconds`, whatever is still running counts as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gptkit.commands.serve import load  # noqa: E402
from gptkit.serve.app import create_app  # noqa: E402
from gptkit.serve.engine import Engine  # noqa: E402

LEVELS = (1, 4, 16, 32)
PROMPTS = ["Once upon a time", "The little dog", "She opened the door and", "Tom and Lily"]


async def one_request(http: httpx.AsyncClient, prompt: str, max_tokens: int) -> dict:
    """Stream one completion -> {ttft, latency, tokens}."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    ttft, tokens = None, 0
    async with http.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif ttft is None and chunk["choices"]:
                ttft = time.perf_counter() - start
    return {"ttft": ttft or 0.0, "latency": time.perf_counter() - start, "tokens": tokens}


async def level(url: str, clients: int, per_client: int, max_tokens: int, seconds: float):
    """Run `clients` concurrent clients -> (results, errors, wall seconds)."""
    results, errors = [], 0

    async def client(i: int):
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=seconds) as http:
            for j in range(per_client):
                try:
                    prompt = PROMPTS[(i + j) % len(PROMPTS)]
                    results.append(await one_request(http, prompt, max_tokens))
                except Exception:  # noqa: BLE001 - counted, the table reports it
                    errors += 1

    start = time.perf_counter()
    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    done, pending = await asyncio.wait(tasks, timeout=seconds)
    for t in pending:
        t.cancel()
    errors += len(pending)
    return results, errors, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def start_server(path: str, max_batch: int) -> str:
    model, tok = load(path, "auto")
    engine = Engine(model, tok, max_batch=max_batch, queue_size=4 * max_batch)
    app = create_app(engine, model_id="bench", max_tokens=1024)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path", nargs="?", default="runs/demo", help="run, checkpoint or export dir")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--level-seconds", type=float, default=120)
    args = p.parse_args()
    if not Path(args.path).exists():
        sys.exit(f"bench_serve: {args.path} does not exist; run 'make demo' or pass a run dir")
    url = start_server(args.path, max(LEVELS))
    print("| clients | requests | tokens/s | TTFT p50 | TTFT p99 | latency p50 | latency p99 "
          "| errors |\n|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for clients in LEVELS:
        res, errors, wall = asyncio.run(
            level(url, clients, args.requests_per_client, args.max_tokens, args.level_seconds)
        )
        ttft, lat = [r["ttft"] for r in res], [r["latency"] for r in res]
        rate = sum(r["tokens"] for r in res) / wall
        print(f"| {clients} | {len(res)} | {rate:.0f} | {pct(ttft, .5)*1e3:.0f} ms "
              f"| {pct(ttft, .99)*1e3:.0f} ms | {pct(lat, .5):.2f} s | {pct(lat, .99):.2f} s "
              f"| {errors} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

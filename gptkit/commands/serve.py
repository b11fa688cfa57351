"""`gptkit serve PATH`: an OpenAI-compatible HTTP server and chat page over one model.

    gptkit serve runs/demo --port 8000 --api-key secret
Then POST /v1/completions or /v1/chat/completions (the `openai` client works with
base_url="http://127.0.0.1:8000/v1"), or open http://127.0.0.1:8000/ for the chat page.
The engine (gptkit/serve/engine.py) decodes concurrent requests together in one batch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from gptkit import artifacts
from gptkit.errors import GptkitError
from gptkit.serve.app import create_app
from gptkit.serve.engine import Engine
from gptkit.train import runtime

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def run(args) -> int:
    """CLI entry: check the flags, load the model, serve until interrupted."""
    import uvicorn  # the server is needed only here

    api_key = args.api_key or os.environ.get("GPTKIT_API_KEY") or None
    _check_flags(args)
    model, tok = load(args.path, args.device, args.dtype)
    name = args.name or _default_name(args.path)
    engine = Engine(model, tok, max_batch=args.max_concurrency, queue_size=args.queue_size)
    app = create_app(engine, model_id=name, api_key=api_key, max_tokens=args.max_tokens,
                     max_body_bytes=args.max_body_bytes)  # fmt: skip
    where = f"http://{args.host}:{args.port}"
    print(f"gptkit serve: model {name!r} (context {model.config.block_size}) on {where}: "
          f"chat page {where}/, OpenAI API {where}/v1"
          + (" (API key required)" if api_key else ""), file=sys.stderr)  # fmt: skip
    if args.host not in _LOOPBACK and not api_key:
        print("gptkit serve: warning: listening beyond this machine without --api-key",
              file=sys.stderr)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _check_flags(args):
    problems = [
        f"{flag} must be at least 1 (got {value})"
        for flag, value in (
            ("--max-concurrency", args.max_concurrency),
            ("--queue-size", args.queue_size),
            ("--max-tokens", args.max_tokens),
            ("--max-body-bytes", args.max_body_bytes),
        )  # fmt: skip
        if value < 1
    ]
    if not 0 <= args.port <= 65535:
        problems.append(f"--port must be in 0..65535 (got {args.port})")
    if problems:
        raise GptkitError("; ".join(problems) + "; see gptkit serve --help")


def _default_name(path: str) -> str:
    return path[3:] if path.startswith("hf:") else Path(path).resolve().name


def load(path, device: str = "auto", dtype: str = "auto"):
    """(model in eval mode, tokenizer), refusing what cannot generate text."""
    dev = runtime.resolve_device(device)
    # one token per step on CPU: fp32 (bf16 SDPA is slower there at short lengths)
    cpu_auto = dtype == "auto" and dev.type == "cpu"
    dt = torch.float32 if cpu_auto else runtime.resolve_dtype(dtype, dev)
    model, tok = artifacts.load_language_model(path, device=dev, dtype=dt, use="serve")
    return model, tok

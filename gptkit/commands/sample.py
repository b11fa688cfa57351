"""`gptkit sample PATH`: continue a prompt with a run, checkpoint or local HF GPT-2 model.

    gptkit sample runs/demo --prompt "Once upon a time" --max-new-tokens 100 --top-p 0.9
One sample streams to stdout as it is generated; `--num-samples N` prints N samples after one
batched run; `--json` prints one JSON object per sample. Sampling itself is model/generate.py.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from gptkit import artifacts
from gptkit.config import ConfigError, SampleConfig, build
from gptkit.errors import GptkitError
from gptkit.model.generate import generate
from gptkit.train import runtime

# SampleConfig field -> the flag that sets it, so messages name what the user typed.
_FLAGS = {
    "prompt": "--prompt",
    "max_new_tokens": "--max-new-tokens",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "repetition_penalty": "--repetition-penalty",
    "num_samples": "--num-samples",
    "seed": "--seed",
    "stop": "--stop",
}
_DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
_REPLACEMENT = "\ufffd"  # what a decoder prints for bytes of a still-incomplete UTF-8 character


def run(args) -> int:
    """CLI entry: flags -> SampleConfig -> sample()."""
    cfg = config_from_args(args)
    sample(args.path, cfg, device=args.device, dtype=args.dtype, as_json=args.json)
    return 0


def config_from_args(args) -> SampleConfig:
    """Build a SampleConfig from the flags that were given; problems name the flags."""
    raw = {k: getattr(args, k) for k in _FLAGS if k != "prompt" and getattr(args, k) is not None}
    raw["prompt"] = _read_prompt(args)
    problems: list[str] = []
    cfg = build(SampleConfig, raw, "", problems, "command line")
    if any(s == "" for s in cfg.stop):
        problems.append("`stop` must not be empty")
    if problems:
        for field, flag in _FLAGS.items():
            problems = [p.replace(f"`{field}`", f"`{flag}`") for p in problems]
        raise ConfigError("; ".join(problems) + "; fix the flag (see gptkit sample --help)")
    return cfg


def _read_prompt(args) -> str:
    if args.prompt is not None and args.prompt_file is not None:
        raise GptkitError("both --prompt and --prompt-file given; pass only one")
    if args.prompt == "-" or args.prompt_file == "-":
        return sys.stdin.read()
    if args.prompt_file is not None:
        try:
            return Path(args.prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or type(e).__name__
            raise GptkitError(
                f"cannot read --prompt-file {args.prompt_file} ({reason}); pass a UTF-8 text file"
            ) from None
    return args.prompt or ""


def sample(path, cfg: SampleConfig, *, device="auto", dtype="auto", as_json=False, out=None):
    """Generate `cfg.num_samples` continuations of `cfg.prompt` -> one dict per sample."""
    out = out if out is not None else sys.stdout
    model, tok, dev = _load(path, device, dtype)
    ids = tok.encode(cfg.prompt) or [tok.eot_id]  # an empty prompt starts a new document
    idx = torch.tensor([ids] * cfg.num_samples, dtype=torch.long, device=dev)
    rows = [_Completion(tok, cfg.stop) for _ in range(cfg.num_samples)]
    stream = out if cfg.num_samples == 1 and not as_json else None
    if stream is not None:
        stream.write(cfg.prompt)
        stream.flush()
    start = time.perf_counter()
    knobs = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty")
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    tokens = generate(model, idx, **{k: getattr(cfg, k) for k in knobs}, generator=gen)
    for column in tokens:
        now = time.perf_counter() - start
        for row, token in zip(rows, column.tolist(), strict=True):
            row.add(token, now)
        if stream is not None:
            rows[0].flush(stream)
        if all(row.finish_reason for row in rows):
            break
    return _report(rows, cfg, time.perf_counter() - start, stream, as_json, out)


def _load(path, device: str, dtype: str):
    """(model in eval mode on device/dtype, tokenizer, device), with user-facing checks."""
    if dtype not in _DTYPE_NAMES:
        raise GptkitError(f"unknown --dtype {dtype!r}; choose one of {', '.join(_DTYPE_NAMES)}")
    dev = runtime.resolve_device(device)
    # Decoding one token at a time on CPU: fp32 (bf16 SDPA is slower at short lengths there).
    cpu_auto = dtype == "auto" and dev.type == "cpu"
    dt = torch.float32 if cpu_auto else runtime.resolve_dtype(dtype, dev)
    model, tok = artifacts.load_language_model(path, device=dev, dtype=dt, use="sample from")
    return model, tok, dev


class _Completion:
    """One sample's text as tokens arrive: stop strings, end-of-text and what is safe to print."""

    def __init__(self, tok, stops: list[str]):
        self.tok, self.stops = tok, stops
        self.tokens: list[int] = []
        self.text = ""
        self.printed = 0  # characters of `text` already written to the stream
        self.count = 0  # tokens generated, including the one that ended the sample
        self.finish_reason: str | None = None
        self.seconds = 0.0

    def add(self, token: int, now: float):
        """Take the next token unless the sample is already finished."""
        if self.finish_reason:
            return
        self.count, self.seconds = self.count + 1, now
        if token == self.tok.eot_id:
            self.finish_reason = "eot"
            return
        self.tokens.append(token)
        # Decode everything: a multi-byte character split across tokens comes out whole.
        self.text = self.tok.decode(self.tokens)
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.finish_reason = self.text[:cut], "stop"

    def flush(self, stream):
        """Write the text that can no longer change."""
        end = len(self.text) if self.finish_reason else self._stable_end()
        if end > self.printed:
            stream.write(self.text[self.printed : end])
            stream.flush()
            self.printed = end

    def _stable_end(self) -> int:
        text = self.text.rstrip(_REPLACEMENT)  # maybe the first bytes of a character
        for stop in self.stops:  # hold back a tail that may still grow into a stop string
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    text = text[:-n]
                    break
        return len(text)


def _report(rows, cfg: SampleConfig, seconds: float, stream, as_json: bool, out) -> list[dict]:
    results = []
    for row in rows:
        row.finish_reason = row.finish_reason or "length"
        row.seconds = row.seconds or seconds
        results.append(
            {
                "prompt": cfg.prompt,
                "completion": row.text,
                "tokens": row.count,
                "finish_reason": row.finish_reason,
                "tokens_per_second": round(row.count / max(row.seconds, 1e-9), 2),
            }
        )
    if stream is not None:
        rows[0].flush(stream)
        stream.write("\n")
    elif as_json:
        for r in results:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
    else:
        for i, r in enumerate(results):
            out.write(f"--- sample {i + 1}/{len(results)} ({r['finish_reason']}) ---\n")
            out.write(r["prompt"] + r["completion"] + "\n")
    out.flush()
    return results

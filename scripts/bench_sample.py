"""Sampling speed: gptkit's KV-cache `generate` vs recomputing the whole context every step.

    python scripts/bench_sample.py                      # 6L/384/6h, block 1024, 512 new tokens
    python scripts/bench_sample.py --new-tokens 32      # quick check
    python scripts/bench_sample.py --block-size 256 --vocab-size 65 --new-tokens 500 \
        --batch-sizes 1                                 # nanoGPT's baby GPT (char)

The baseline is nanoGPT's `generate`: crop to block_size, full forward, LM head on the last
position only. Random fp32 weights, one-token prompt. Run it alone: numbers taken on shared cores
are meaningless. Prints a markdown table with the command and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from gptkit.model import fused
from gptkit.model.generate import generate, sample_next
from gptkit.model.gpt import GPT, GPTConfig


@torch.no_grad()
def recompute(model: GPT, idx: torch.Tensor, new_tokens: int, generator) -> torch.Tensor:
    """nanoGPT-style sampling: the full (cropped) context goes through the model at every step."""
    block = model.config.block_size
    for _ in range(new_tokens):
        h = model.transformer(idx[:, -block:])
        logits = model.head(h[:, -1:], wte=model.transformer.wte.weight)[:, -1]
        tok = sample_next(logits, temperature=1.0, generator=generator)
        idx = torch.cat([idx, tok[:, None]], dim=1)
    return idx


def cached(model: GPT, idx: torch.Tensor, new_tokens: int, generator) -> torch.Tensor:
    """gptkit: prefill once, then one token per step through the KV cache."""
    cols = list(
        generate(model, idx, max_new_tokens=new_tokens, temperature=1.0, generator=generator)
    )
    return torch.cat([idx, torch.stack(cols, dim=1)], dim=1)


def plain_linear(model, idx, new_tokens, generator):
    """gptkit's cached generate with every Linear through F.linear (BLAS's one-thread GEMV)."""
    fast = fused.linear
    fused.linear = lambda layer, x: layer(x)
    try:
        return cached(model, idx, new_tokens, generator)
    finally:
        fused.linear = fast


def weight_read_floor(model: GPT) -> tuple[float, float]:
    """(bytes of the weights one decode step reads, seconds to read them once: a `sum` over a
    copy laid out in one buffer, the best of 20)."""
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    best = float("inf")
    for _ in range(20):
        t = time.perf_counter()
        flat.sum()
        best = min(best, time.perf_counter() - t)
    return flat.numel() * flat.element_size(), best


def tokens_per_second(fn, model, batch: int, new_tokens: int) -> float:
    idx = torch.zeros(batch, 1, dtype=torch.long)
    fn(model, idx, 4, torch.Generator().manual_seed(0))  # warm-up: kernels, allocator
    t = time.perf_counter()
    out = fn(model, idx, new_tokens, torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - t
    assert out.shape == (batch, 1 + new_tokens), f"unexpected output shape {tuple(out.shape)}"
    return batch * new_tokens / seconds


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=512, help="tokens generated per row")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=384)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--block-size", type=int, default=1024)
    p.add_argument("--vocab-size", type=int, default=50304)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    config = GPTConfig(
        n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
        block_size=args.block_size, vocab_size=args.vocab_size,
    )  # fmt: skip
    model = GPT(config).eval()
    print(f"command: `python {' '.join(sys.argv)}`  ")
    print(f"machine: {machine()}  ")
    print(
        f"model: {args.n_layer}L/{args.n_embd}d/{args.n_head}h, block {args.block_size}, "
        f"vocab {args.vocab_size}, {model.num_params() / 1e6:.1f}M params, fp32, "
        f"{args.new_tokens} new tokens from a 1-token prompt\n"
    )
    size, seconds = weight_read_floor(model)
    print(
        f"weights: {size / 1e6:.0f} MB, read once in {seconds * 1e3:.2f} ms "
        f"({size / seconds / 1e9:.1f} GB/s): at most {1 / seconds:,.0f} tok/s at batch 1\n"
    )
    print("| batch | KV cache tok/s | KV cache, F.linear GEMV tok/s | full recompute tok/s "
          "| vs F.linear | vs recompute |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        fast = tokens_per_second(cached, model, batch, args.new_tokens)
        plain = tokens_per_second(plain_linear, model, batch, args.new_tokens)
        slow = tokens_per_second(recompute, model, batch, args.new_tokens)
        print(f"| {batch} | {fast:,.1f} | {plain:,.1f} | {slow:,.1f} | {fast / plain:.2f}x | "
              f"{fast / slow:.1f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

"""Sampling speed: gptkit's `generate` (KV cache + `Decoder`) vs its module path vs recompute.

    python scripts/bench_sample.py                      # 6L/384/6h, block 1024, 512 new tokens
    python scripts/bench_sample.py --new-tokens 32      # quick check
    python scripts/bench_sample.py --block-size 256 --vocab-size 65 --new-tokens 500 \
        --batch-sizes 1                                 # nanoGPT's baby GPT (char)

Side by side in one run: `generate` as it is (one-token steps through decode.py's `Decoder`),
the same with every step through the modules (how gptkit decoded before decode.py), and
nanoGPT's `generate` (crop to block_size, full forward, LM head on the last position only).
Two floors: reading the weights once (a `sum`), and the step's weight GEMVs alone. Random fp32
weights, one-token prompt. Run it alone: numbers taken on shared cores are meaningless. Prints
a markdown table with the command and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from gptkit.model.decode import Decoder
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


def modules(model, idx, new_tokens, generator):
    """gptkit's cached generate with every step through the modules (no `Decoder`): how it
    decoded before decode.py, with BLAS's one-thread GEMVs."""
    build = Decoder.build
    Decoder.build = staticmethod(lambda model: None)
    try:
        return cached(model, idx, new_tokens, generator)
    finally:
        Decoder.build = build


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


def gemv_seconds(model: GPT) -> float:
    """Seconds for one pass of the decode step's weight GEMVs (every layer's projections and
    the LM head) through `Decoder`'s kernels at batch 1, the best of 20: the step's floor
    with these kernels, every other op removed."""
    decoder = Decoder(model)
    linears = [lin for layer in decoder.layers
               for lin in (layer.qkv, layer.proj, layer.up, layer.gate, layer.down)
               if lin is not None] + [decoder.head]  # fmt: skip
    inputs = [torch.randn(1, lin.weight.shape[1]) for lin in linears]
    best = float("inf")
    with torch.no_grad():
        for _ in range(20):
            t = time.perf_counter()
            for lin, x in zip(linears, inputs, strict=True):
                lin(x)
            best = min(best, time.perf_counter() - t)
    return best


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
    gemvs = gemv_seconds(model)
    print(
        f"the step's weight GEMVs alone (Decoder's split GEMVs, batch 1): {gemvs * 1e3:.2f} ms: "
        f"at most {1 / gemvs:,.0f} tok/s with these kernels\n"
    )
    print("| batch | KV cache, Decoder tok/s | KV cache, modules tok/s | full recompute tok/s "
          "| vs modules | vs recompute | x bandwidth limit |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        fast = tokens_per_second(cached, model, batch, args.new_tokens)
        plain = tokens_per_second(modules, model, batch, args.new_tokens)
        slow = tokens_per_second(recompute, model, batch, args.new_tokens)
        print(f"| {batch} | {fast:,.1f} | {plain:,.1f} | {slow:,.1f} | {fast / plain:.2f}x | "
              f"{fast / slow:.1f}x | {fast * seconds / batch:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

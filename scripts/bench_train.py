"""Training throughput of the baby GPT on this machine: fp32 vs bf16 autocast, compile on/off.

    python scripts/bench_train.py [--steps 3] [--batch-size 64]

Prints a markdown table: tokens/s, ms/step, achieved model GFLOP/s, MFU against the measured
fp32 and bf16 matmul peaks (measured in the same run). Run it alone: 2 shared cores make any
number taken beside another job meaningless.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from gptkit.config import TrainConfig
from gptkit.model.gpt import GPT, GPTConfig
from gptkit.train.optim import build_optimizer
from gptkit.train.tasks import lm_loss


def matmul_peak(dtype, n=2048, reps=10) -> float:
    """FLOP/s of a square matmul in `dtype` (best of `reps`)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def train_speed(dtype, compile_, args) -> dict:
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, pad_vocab_to=64)
    model = GPT(cfg)
    opt = build_optimizer(model, TrainConfig(), device_type="cpu")
    step_model = torch.compile(model) if compile_ else model
    x = torch.randint(0, 65, (args.batch_size, 256))
    y = torch.randint(0, 65, (args.batch_size, 256))
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else _Null()

    def step():
        with ctx:
            loss = lm_loss(step_model, (x, y))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = time.perf_counter()
    for _ in range(args.warmup):
        step()
    warm = time.perf_counter() - t
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    dt = sorted(times)[len(times) // 2]  # median step
    tps = args.batch_size * 256 / dt
    return {"tps": tps, "ms": 1000 * dt, "flops": tps * model.flops_per_token(256), "warm": warm}


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps (compile happens here)")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    p32 = matmul_peak(torch.float32)
    p16 = matmul_peak(torch.bfloat16, n=256, reps=1)  # a quick probe: very slow without bf16 units
    if p16 > p32 / 2:
        p16 = matmul_peak(torch.bfloat16)
    print(f"command: python scripts/bench_train.py --steps {args.steps} --batch-size "
          f"{args.batch_size}")  # fmt: skip
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    print(f"matmul peak: fp32 {p32 / 1e9:.0f} GFLOP/s, bf16 {p16 / 1e9:.0f} GFLOP/s\n")
    print(
        "| dtype | compile | tokens/s | ms/step | model GFLOP/s | x fp32 peak | MFU (own dtype) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for dtype in ("fp32", "bf16"):
        if dtype == "bf16" and p16 < p32 / 2:
            print(f"| bf16 | - | skipped: this CPU multiplies bf16 at {p16 / 1e9:.1f} GFLOP/s "
                  "(no AVX512-BF16/AMX); gptkit's dtype auto picks fp32 here | | | | |")  # fmt: skip
            continue
        for compile_ in (False, True):
            r = train_speed(dtype, compile_, args)
            peak = p32 if dtype == "fp32" else p16
            print(f"| {dtype} | {'on' if compile_ else 'off'} | {r['tps']:,.0f} | {r['ms']:.0f} | "
                  f"{r['flops'] / 1e9:.0f} | {r['flops'] / p32:.2f} | {r['flops'] / peak:.0%} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

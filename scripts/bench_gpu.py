"""GPT-2 124M training throughput on one GPU: tokens/s, ms/step, model TFLOP/s, MFU, memory.

    python scripts/bench_gpu.py [--settings compile,eager] [--batch-size 32] [--steps 20]

GPT-2 small (12 layers, 12 heads, 768 wide, block 1024, vocab 50304) on random tokens, stepped
the way `gptkit pretrain` steps it on a GPU: bf16 autocast (`runtime.autocast`), SDPA (flash on
sm80+), `lm_loss`, gradient clipping and fused AdamW (`build_optimizer`), with and without
`torch.compile` (`runtime.parallelize`). Each setting runs in its own process (its own compile
and peak memory); the batch halves until it fits. `--warmup` untimed steps (compile happens
there), then `--steps` timed ones between two `torch.cuda.synchronize()`. MFU = model FLOP/s
(`GPT.flops_per_token`: 6N + 12·L·C·T) over the GPU's dense bf16 peak in gptkit's table
(`gptkit.train.metrics.PEAK_FLOPS`) or `--peak-flops`. About 2 minutes on an H100.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
SETTINGS = {
    "compile": "bf16 autocast + torch.compile + fused AdamW",
    "eager": "bf16 autocast, eager + fused AdamW",
}
OOM_EXIT = 3  # a child's exit code for "out of memory": the parent retries with half the batch


def auto_batch() -> int:
    """Sequences of 1024 tokens per step that fit this GPU's memory (~1.1 GiB each, bf16)."""
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    return 32 if gib >= 60 else 16 if gib >= 30 else 8 if gib >= 20 else 4


def flash_usable(B: int, T: int) -> bool:
    """Whether SDPA's flash kernel runs a causal bf16 attention of this model's shape."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(B, GPT2_124M["n_head"], T, 64, device="cuda", dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
        return True
    except RuntimeError:
        return False


def run_one(setting: str, args) -> dict:
    """Time one setting in this process; the training step is `fit()`'s, on one micro-batch."""
    from gptkit.config import TrainConfig
    from gptkit.model.gpt import GPT, GPTConfig
    from gptkit.train import runtime
    from gptkit.train.optim import build_optimizer
    from gptkit.train.tasks import lm_loss

    rt = runtime.setup("cuda", "bfloat16")  # also turns TF32 on, as a run does
    B, T = args.batch_size, GPT2_124M["block_size"]
    flash = flash_usable(B, T)
    torch.manual_seed(0)
    with torch.device(rt.device):  # initialise on the GPU: seconds faster than on the CPU
        model = GPT(GPTConfig(**GPT2_124M))
    train = TrainConfig(compile=setting == "compile", lr=6e-4, weight_decay=0.1, grad_clip=1.0)
    wrapped = runtime.parallelize(model, rt, train)
    optimizer = build_optimizer(model, train, device_type="cuda")
    x, y = (torch.randint(0, 50257, (B, T), device=rt.device) for _ in range(2))

    def step():
        with runtime.autocast(rt):
            loss = lm_loss(wrapped, (x, y))
        loss.backward()
        loss.item()  # fit() reads the loss and the norm every step: the same two host syncs
        float(torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t = time.perf_counter()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    warm = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / args.steps
    tps = B * T / dt
    return {"batch": B, "tps": tps, "ms": 1000 * dt, "flops": tps * model.flops_per_token(T),
            "params": model.num_params(), "flops_per_token": model.flops_per_token(T),
            "mem": torch.cuda.max_memory_allocated(), "warm": warm, "flash": flash}  # fmt: skip


def measure(setting: str, args) -> dict:
    """Run one setting in a child process, halving the batch on out-of-memory."""
    batch = args.batch_size or auto_batch()
    while True:
        print(f"{setting}: measuring at batch {batch} x 1024 ...", flush=True)
        cmd = [sys.executable, __file__, "--one", setting, "--batch-size", str(batch),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode == 0:
            return json.loads(out.stdout.strip().splitlines()[-1])
        if out.returncode == OOM_EXIT and batch > 1:
            print(f"{setting}: batch {batch} does not fit in memory", flush=True)
            batch //= 2
            continue
        return {"error": out.stderr.strip()[-2000:] or f"exit code {out.returncode}"}


def report(results: dict, peak: float | None, name: str):
    """The markdown table, and what the MFU column is measured against."""
    print("| setting | batch × T | tokens/s | ms/step | model TFLOP/s | MFU | peak memory | "
          "warm-up s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s, r in results.items():
        if "error" in r:
            print(f"| {SETTINGS[s]} | failed (below) | | | | | | |")
            continue
        mfu = f"{r['flops'] / peak:.1%}" if peak else "-"
        print(f"| {SETTINGS[s]} | {r['batch']} × 1024 | {r['tps']:,.0f} | {r['ms']:.1f} | "
              f"{r['flops'] / 1e12:.1f} | {mfu} | {r['mem'] / 2**30:.1f} GiB | "
              f"{r['warm']:.0f} |")  # fmt: skip
    if peak:
        print(f"\nMFU against a dense bf16 peak of {peak / 1e12:.0f} TFLOP/s.")
    else:
        print(f"\nMFU: '-' because {name!r} has no bf16 peak in gptkit.train.metrics.PEAK_FLOPS; "
              "pass --peak-flops FLOP/S to get one.")  # fmt: skip
    for s, r in results.items():
        if "error" in r:
            print(f"\n{s} failed:\n{r['error']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset")
    ap.add_argument("--batch-size", type=int, default=0, help="sequences per step (0 = by memory)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps (compile happens here)")
    ap.add_argument("--peak-flops", type=float, help="the GPU's dense bf16 FLOP/s (default: table)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setting, print JSON
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to measure")
        return 0
    if args.one:
        try:
            print(json.dumps(run_one(args.one, args)))
        except Exception as e:  # Inductor may wrap an OOM in its own error: read the message
            if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e):
                return OOM_EXIT
            raise
        return 0
    from gptkit.train.metrics import peak_flops

    name = torch.cuda.get_device_name(0)
    peak = peak_flops(torch.device("cuda", 0), args.peak_flops)
    unknown = [s for s in args.settings.split(",") if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
    results = {s: measure(s, args) for s in args.settings.split(",")}
    cap = "".join(map(str, torch.cuda.get_device_capability(0)))
    print(f"\ncommand: `python scripts/bench_gpu.py {' '.join(sys.argv[1:])}`  ")
    print(f"GPU: {name} (sm{cap}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} "
          f"GiB), torch {torch.__version__}, CUDA {torch.version.cuda}  ")  # fmt: skip
    done = [r for r in results.values() if "error" not in r]
    if done:
        r = done[0]
        print(f"model: GPT-2 124M ({r['params'] / 1e6:.1f}M params, "
              f"{r['flops_per_token'] / 1e9:.2f} GFLOP/token), random tokens; flash SDPA "
              f"usable: {'yes' if r['flash'] else 'no'}\n")  # fmt: skip
    report(results, peak, name)
    return 1 if len(done) < len(results) else 0


if __name__ == "__main__":
    sys.exit(main())

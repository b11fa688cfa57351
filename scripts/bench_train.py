"""Training speed and memory of nanoGPT's baby GPT: gptkit's settings side by side with nanoGPT.

    python scripts/bench_train.py [--steps 3] [--nanogpt PATH/TO/nanoGPT/model.py]

The baby GPT of nanoGPT's `config/train_shakespeare_char.py`: 6 layers, 6 heads, 384 wide, block
256, batch 64, char vocab (65), dropout 0.2, AdamW, fp32. Each setting runs in its own process
(so its peak RSS is its own): one warm-up step (compile happens there), then the median of
`--steps` timed steps. Reports tokens/s, ms/step, model GFLOP/s with nanoGPT's formula
(6N + 12·L·C·T per token), that as a fraction of the fp32 matmul peak measured in the same run
(before and after), and peak RSS. With `--nanogpt`, nanoGPT's own `model.py` (a checkout's
file; its optimizer from `configure_optimizers`) runs the same batches; `nanogpt_mmap` runs it
again under the fixed glibc mmap threshold gptkit sets for itself (runtime.fix_mmap_threshold),
and `eager_dynamic` runs gptkit without it, so the allocator's share of the memory difference
shows apart. Run it alone: numbers taken while anything else uses the cores are meaningless.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

BABY = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65)
SETTINGS = {
    "nanogpt": "nanoGPT `model.py`, eager",
    "nanogpt_mmap": "nanoGPT `model.py`, eager, gptkit's mmap threshold (`MALLOC_MMAP_THRESHOLD_`)",
    "before": "gptkit at `--before` (another checkout), eager",
    "eager": "gptkit, eager (default)",
    "eager_dynamic": "gptkit, eager, glibc's dynamic mmap threshold (as before)",
    "compile": "gptkit, `train.compile: true`",
    "checkpoint": "gptkit, `train.activation_checkpointing: blocks`",
}


def matmul_peak(dtype=torch.float32, n=2048, reps=10) -> float:
    """FLOP/s of a square matmul in `dtype` (best of `reps`)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def build(setting: str, args):
    """(model, optimizer, loss_fn, flops_per_token) for one setting."""
    if setting.startswith("nanogpt"):
        spec = importlib.util.spec_from_file_location("nanogpt_model", args.nanogpt)
        nano = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(nano)
        model = nano.GPT(nano.GPTConfig(**BABY, dropout=args.dropout, bias=True))
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
        n = model.get_num_params()
        return model, opt, lambda x, y: model(x, y)[1], 6 * n + 12 * 6 * 384 * 256
    from gptkit.config import TrainConfig
    from gptkit.model.gpt import GPT, GPTConfig
    from gptkit.train.optim import build_optimizer
    from gptkit.train.tasks import lm_loss

    if setting not in ("before", "eager_dynamic"):  # as runtime.setup does (pretrain, finetune)
        from gptkit.train.runtime import fix_mmap_threshold  # not in --before's checkout

        fix_mmap_threshold()

    cfg = GPTConfig(**BABY, pad_vocab_to=1, dropout=args.dropout,
                    )  # fmt: skip
    model = GPT(cfg)
    model.transformer.checkpoint_blocks = setting == "checkpoint"
    opt = build_optimizer(model, TrainConfig(beta2=0.99), device_type="cpu")
    step_model = torch.compile(model) if setting == "compile" else model
    return model, opt, lambda x, y: lm_loss(step_model, (x, y)), model.flops_per_token(256)


def run_one(setting: str, args) -> dict:
    torch.manual_seed(0)
    model, opt, loss_fn, flops_per_token = build(setting, args)
    model.train()
    x = torch.randint(0, 65, (args.batch_size, 256))
    y = torch.randint(0, 65, (args.batch_size, 256))

    def step():
        loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

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
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux: KiB)
    return {"tps": tps, "ms": 1000 * dt, "flops": tps * flops_per_token, "warm": warm, "rss": rss}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps (compile happens here)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--nanogpt", help="path to nanoGPT's model.py, to run it side by side")
    ap.add_argument("--before", help="a gptkit checkout (e.g. a git worktree of an older "
                    "commit) to run side by side as 'before'")  # fmt: skip
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setting, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    # run only when given
    from gptkit.train import runtime  # this checkout's, after --one (which may be --before's)

    optional = {"nanogpt": args.nanogpt, "nanogpt_mmap": args.nanogpt, "before": args.before}
    settings = [s for s in args.settings.split(",") if optional.get(s, True)]
    peak = matmul_peak()
    results = {}
    for s in settings:
        cmd = [sys.executable, __file__, "--one", s, *sys.argv[1:]]
        env = dict(os.environ)
        if s == "nanogpt_mmap":
            env["MALLOC_MMAP_THRESHOLD_"] = str(runtime.MMAP_THRESHOLD)
        if s == "before":  # that checkout's gptkit shadows this one
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.before, env.get("PYTHONPATH")]))
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(f"setting {s} failed:\n{out.stderr[-2000:]}")
        results[s] = json.loads(out.stdout.strip().splitlines()[-1])
    peak_after = matmul_peak()
    print(f"command: `python scripts/bench_train.py {' '.join(sys.argv[1:])}`  ")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}  ")  # fmt: skip
    print(f"fp32 matmul peak (2048³): {peak / 1e9:.0f} GFLOP/s before, "
          f"{peak_after / 1e9:.0f} after\n")  # fmt: skip
    base = results.get("nanogpt", results.get("eager"))
    print("| setting | tokens/s | ms/step | model GFLOP/s | × fp32 peak | peak RSS | "
          "× speed | × RSS | warm-up s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s, r in results.items():
        print(f"| {SETTINGS[s]} | {r['tps']:,.0f} | {r['ms']:,.0f} | {r['flops'] / 1e9:.0f} | "
              f"{r['flops'] / max(peak, peak_after):.2f} | {r['rss'] / 2**30:.2f} GiB | "
              f"{r['tps'] / base['tps']:.2f} | {r['rss'] / base['rss']:.2f} | "
              f"{r['warm']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()

"""Where the time goes: `torch.profiler` on one baby-GPT training step and on decoding.

    python scripts/profile_step.py [--batch-size 64] [--decode-tokens 100] [--top 15]

nanoGPT's baby GPT (6 layers, 6 heads, 384 wide, block 256, char vocab, dropout 0.2), fp32 on
the CPU: one warm-up step, then one profiled step (forward, backward, AdamW); then `generate` at
batch 1 with a warm cache, profiled over `--decode-tokens` tokens. Prints the top operators by
self CPU time as markdown tables. Run it alone: the 2 cores are shared by everything.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from gptkit.config import TrainConfig
from gptkit.model.generate import generate
from gptkit.model.gpt import GPT, GPTConfig
from gptkit.train.optim import build_optimizer
from gptkit.train.tasks import lm_loss

BABY = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, pad_vocab_to=1)


def table(prof, top: int, per: int = 1, unit: str = "step") -> str:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [f"| op | calls/{unit} | self ms/{unit} | share |", "|---|---:|---:|---:|"]
    for e in events[:top]:
        ms = e.self_cpu_time_total / 1000 / per
        rows.append(f"| `{e.key}` | {e.count / per:.0f} | {ms:,.1f} | "
                    f"{e.self_cpu_time_total / total:.0%} |")  # fmt: skip
    rows.append(f"| total | | {total / 1000 / per:,.1f} | 100% |")
    return "\n".join(rows)


def train_profile(args, cfg: GPTConfig) -> str:
    torch.manual_seed(0)
    model = GPT(cfg).train()
    opt = build_optimizer(model, TrainConfig(), device_type="cpu")
    x = torch.randint(0, 65, (args.batch_size, 256))
    y = torch.randint(0, 65, (args.batch_size, 256))

    def step():
        lm_loss(model, (x, y)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return table(prof, args.top)


def decode_profile(args, cfg: GPTConfig) -> str:
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    idx = torch.zeros(1, 1, dtype=torch.long)
    list(generate(model, idx, max_new_tokens=8, temperature=0))  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        list(generate(model, idx, max_new_tokens=args.decode_tokens, temperature=0))
    return table(prof, args.top, per=args.decode_tokens, unit="token")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=100)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--dropout", type=float, default=0.2)
    args = ap.parse_args()
    cfg = GPTConfig(**BABY, dropout=args.dropout)
    print(f"## train step (batch {args.batch_size}, dropout {args.dropout}, fp32, "
          f"{torch.get_num_threads()} threads)\n")  # fmt: skip
    print(train_profile(args, cfg))
    print(f"\n## decode, batch 1, {args.decode_tokens} tokens (greedy, KV cache)\n")
    print(decode_profile(args, GPTConfig(**BABY)))


if __name__ == "__main__":
    main()

"""Loss per wall-second: nanoGPT's GPT-2 recipe against gptkit's fast recipe, side by side.

    python scripts/bench_recipe.py --text ../shared/data/tinyshakespeare.txt [--steps 2000]

Character-level tiny-shakespeare (documents split at blank lines, 10% of them to val), nanoGPT's
small CPU shape (4 layers, 4 heads, 128 wide, block 128, batch 16, dropout 0). Both recipes are
evaluated every 100 steps on the same 20 fixed val batches. Prints, per recipe, the training
seconds (evaluation excluded, the same for both) to val loss 2.0 and 1.8, the final val loss,
and the ratio. Run it alone: 2 shared cores make any time taken beside another job meaningless.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPE = ["model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.block_size=128",
         "model.dropout=0.0", "model.pad_vocab_to=1", "train.batch_size=16",
         "train.eval_interval=100", "train.eval_steps=20", "train.log_interval=100",
         "train.ckpt_interval=0", "train.device=cpu", "train.dtype=float32"]  # fmt: skip
# nanoGPT's shakespeare-char settings at this shape
GPT2 = ["model.family=gpt2", "train.lr=1e-3", "train.min_lr=1e-4", "train.warmup_steps=100",
        "train.beta2=0.99"]  # fmt: skip
FAST = ["-c", "configs/shakespeare_char_fast.yaml"]
TARGETS = (2.0, 1.8)


def prepare(text: str, out: Path) -> Path:
    data = out / "data"
    subprocess.run([sys.executable, "-m", "gptkit", "prepare", f"prepare.source={text}",
                    "prepare.tokenizer=char", f"prepare.out_dir={data}", 'prepare.split_on="\\n\\n"',
                    "prepare.val_fraction=0.1"], check=True)  # fmt: skip
    return data


def train(name: str, recipe: list[str], data: Path, out: Path, steps: int) -> dict:
    run = out / name
    cmd = [sys.executable, "-m", "gptkit", "pretrain", *recipe, *SHAPE, f"data.dir={data}",
           f"train.out_dir={run}", f"train.max_steps={steps}"]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    seconds, last_step, curve = 0.0, 0, []
    for r in records:
        if "ms_per_step" in r:  # training time since the previous log line (no evaluation)
            seconds += r["ms_per_step"] / 1000 * (r["step"] - last_step)
            last_step = r["step"]
        if "val_loss" in r and r["step"] > 0:
            curve.append((r["step"], seconds, r["val_loss"]))
    reach = {t: next((s for _, s, v in curve if v <= t), None) for t in TARGETS}
    return {"name": name, "curve": curve, "reach": reach, "final": curve[-1][2],
            "seconds": seconds}  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", required=True, help="tinyshakespeare.txt")
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(args.text, Path(tmp))
        rows = [train("gpt2 (nanoGPT recipe)", GPT2, data, Path(tmp), args.steps),
                train("fast (shakespeare_char_fast)", FAST, data, Path(tmp), args.steps)]  # fmt: skip
    cpu = platform.processor() or platform.machine()
    print(f"\n`python scripts/bench_recipe.py --steps {args.steps}` on {cpu}, fp32, 2 threads\n")
    print("| recipe | s to val 2.0 | s to val 1.8 | final val | train s |")
    print("|---|---|---|---|---|")
    for r in rows:
        fmt = [f"{r['reach'][t]:.0f}" if r["reach"][t] is not None else "-" for t in TARGETS]
        print(f"| {r['name']} | {fmt[0]} | {fmt[1]} | {r['final']:.3f} | {r['seconds']:.0f} |")
    base, fast = rows[0]["reach"][1.8], rows[1]["reach"][1.8]
    if base and fast:
        print(f"\ntime to val 1.8: fast / gpt2 = {fast / base:.2f}x")


if __name__ == "__main__":
    main()

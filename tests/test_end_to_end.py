"""The whole path through the CLI on a tiny GPT-2-tokenized model: prepare -> pretrain -> sample
-> eval -> export --format hf -> transformers loads it with the same logits as gptkit."""

import json
import math
import os
import subprocess
import sys

import torch

import gptkit
from gptkit.commands.evaluate import evaluate

MODEL = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32"]
TRAIN = ["train.max_steps=20", "train.batch_size=4", "train.warmup_steps=2", "train.lr=3e-3",
         "train.eval_interval=10", "train.eval_steps=2", "train.log_interval=5",
         "train.device=cpu", "train.dtype=float32"]  # fmt: skip


def start(*args) -> subprocess.Popen:
    """`python -m gptkit ARGS` in the background (each process pays a few seconds of imports)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true"}
    return subprocess.Popen([sys.executable, "-m", "gptkit", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{' '.join(proc.args[3:5])} failed:\n{err[-3000:]}"
    return out


def test_prepare_pretrain_sample_eval_export(tmp_path):
    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "hf"
    prepare = ["prepare.source=builtin:tiny", "prepare.tokenizer=gpt2", "prepare.workers=1",
               "prepare.val_fraction=0.1", f"prepare.out_dir={data}"]  # fmt: skip
    finish(start("prepare", *prepare))
    finish(start("pretrain", *MODEL, *TRAIN, f"data.dir={data}", f"train.out_dir={run}"))
    # sample, eval and export only read the run: start them together, import transformers meanwhile
    procs = [start("sample", run, "--prompt", "def main(", "--max-new-tokens", "8", "--json"),
             start("eval", run, "--json", "--max-batches", "4"),
             start("export", run, "--format", "hf", "--out", out)]  # fmt: skip
    try:
        from transformers import AutoTokenizer, GPT2LMHeadModel

        sample_out, eval_out, _ = [finish(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:  # a sibling failed first: leave no process behind
                p.kill()
                p.communicate()
    (sample,) = map(json.loads, sample_out.splitlines())
    assert sample["prompt"] == "def main(" and 1 <= sample["tokens"] <= 8
    scores = json.loads(eval_out)
    assert math.isfinite(scores["loss"]) and scores["bpb"] > 0 and scores["windows"] > 0
    assert scores["loss"] < math.log(50257)  # 20 steps beat a uniform guess
    assert scores["ppl"] == math.exp(scores["loss"])

    theirs = GPT2LMHeadModel.from_pretrained(out).eval()
    ours = gptkit.load_model(run)
    idx = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, ours(idx), atol=1e-4, rtol=0)
    text = "Once upon a time, def main():\n    return 0"  # the tokenizer files came along too
    ids = gptkit.get_tokenizer("gpt2").encode(text)
    assert AutoTokenizer.from_pretrained(out).encode(text) == ids
    # the exported dir scores like the run it came from
    again = evaluate(out, data=data, max_batches=4, device="cpu")
    assert abs(again["loss"] - scores["loss"]) < 1e-4

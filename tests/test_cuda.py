"""GPU checks, skipped without CUDA: bf16 and fp16 training, torch.compile, flash attention,
cached decoding, torchrun and exact resume on a GPU. `scripts/gpu_check.sh` runs them:

    python -m pytest -q -m cuda tests/test_cuda.py -rs

Every test is marked `cuda`. Tiny models: the file should take a few minutes on one GPU at
most (most of it torch.compile); the 2-GPU DDP test runs only where two GPUs are visible.
"""

import contextlib
import json
import math
import sys

import pytest
import test_families
import test_generate
import test_pretrain
import torch
from test_pretrain import config, losses

from gptkit import artifacts
from gptkit.commands.pretrain import pretrain
from gptkit.model.gpt import GPT, GPTConfig
from gptkit.train import checkpoint

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GPU = ["train.device=cuda"]


def _needs_ampere():
    """bf16 tensor cores and flash attention start at compute capability 8.0."""
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip(f"{torch.cuda.get_device_name()} is older than Ampere (sm80)")


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def _finite(curve: dict) -> bool:
    return all(v is not None and math.isfinite(v) for v in curve.values())


@contextlib.contextmanager
def _no_tf32():
    """Full fp32 matmuls (runtime.setup turns TF32 on for the whole process)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_bf16_run_learns_with_finite_losses(tiny_data, tmp_path, capsys):
    _needs_ampere()
    run = tmp_path / "run"
    last = pretrain(config(tiny_data, run, *GPU, "train.dtype=bfloat16", "train.max_steps=40",
                           "train.eval_interval=20"))  # fmt: skip
    assert "cuda bfloat16 x1" in capsys.readouterr().out  # the run really autocast to bf16
    curve = losses(run)
    assert sorted(curve) == list(range(1, 41)) and _finite(curve), curve
    assert sum(list(curve.values())[-5:]) / 5 < curve[1] - 1.0, curve
    assert last["val_loss"] < 4.5  # ln(257) = 5.55 at init


def test_fp16_run_uses_a_grad_scaler_and_stays_finite(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(config(tiny_data, run, *GPU, "train.dtype=float16", "train.max_steps=40",
                    "train.eval_interval=0"))  # fmt: skip
    assert "cuda float16 x1" in capsys.readouterr().out
    curve = losses(run)
    assert sorted(curve) == list(range(1, 41)) and _finite(curve), curve
    assert sum(list(curve.values())[-5:]) / 5 < curve[1] - 0.5, curve
    # the scaler's state is checkpointed: a GradScaler ran (overflow steps it skipped are fine)
    state = checkpoint.read_state(artifacts.latest_checkpoint(run))
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0, state["scaler"]
    assert _records(run)[-1]["skipped_steps"] < 10, "the scaler kept skipping updates"


def test_compile_matches_eager_in_the_first_steps(tiny_data, tmp_path):
    _needs_ampere()
    common = [*GPU, "train.dtype=bfloat16", "train.max_steps=6", "train.eval_interval=0"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    pretrain(config(tiny_data, eager, *common))
    pretrain(config(tiny_data, compiled, *common, "train.compile=true"))
    a, b = losses(eager), losses(compiled)
    assert sorted(a) == sorted(b) == list(range(1, 7)) and _finite(b), (a, b)
    # bf16 either way; Inductor keeps fused pointwise results in fp32, so not bitwise
    assert all(abs(a[s] - b[s]) <= 3e-2 for s in a), (a, b)
    assert b[6] < b[1], b


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_flash_attention_forward_and_backward_match_math():
    _needs_ampere()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)  # head size 32: flash supports it; default init, where a wrong
    # (non-causal) mask moves the logits by ~10% and bf16 rounding by ~0.3%
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=128, vocab_size=97)).cuda()
    idx = torch.randint(0, 97, (2, 128), device="cuda")

    def run(backend, dtype):
        model.zero_grad(set_to_none=True)
        with (
            sdpa_kernel(backend),
            torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32),
        ):
            logits = model(idx)
        logits.float().logsumexp(-1).mean().backward()
        return logits.detach().float(), model.transformer.wte.weight.grad.clone()

    with _no_tf32():
        ref, ref_grad = run(SDPBackend.MATH, torch.float32)
    flash, flash_grad = run(SDPBackend.FLASH_ATTENTION, torch.bfloat16)  # raises if flash cannot
    math_bf16, _ = run(SDPBackend.MATH, torch.bfloat16)
    assert _rel(flash, ref) < 1.5e-2, (_rel(flash, ref), _rel(math_bf16, ref))
    assert _rel(flash, math_bf16) < 1.5e-2
    assert torch.isfinite(flash_grad).all() and _rel(flash_grad, ref_grad) < 2e-2


@pytest.mark.parametrize("family", test_families.FAMILIES)
def test_cached_greedy_equals_full_recompute_on_gpu(family):
    model = test_families._model(family, block_size=16).cuda()  # sharp, std-0.3 weights
    idx = test_generate._prompt(B=2, T=5).cuda()
    with _no_tf32():  # exact fp32: greedy picks never hinge on TF32 rounding
        out = test_generate._run(model, idx, max_new_tokens=40, temperature=0)
        ref = test_generate._greedy_reference(model, idx, 40)  # slides past block_size too
    assert out.device.type == "cuda"
    assert torch.equal(out, ref)


def test_torchrun_one_gpu_smoke(tiny_data, tmp_path):
    run = tmp_path / "run"
    overrides = [*test_pretrain.TINY, *GPU, "train.dtype=auto", "train.max_steps=4",
                 "train.eval_interval=0", f"data.dir={tiny_data}", f"train.out_dir={run}"]  # fmt: skip
    r = test_pretrain.run_cli([sys.executable, "-m", "torch.distributed.run",
                               "--nproc_per_node=1", f"--master_port={test_pretrain.free_port()}",
                               "-m", "gptkit", "pretrain", *overrides])  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cuda" in r.stdout, r.stdout[-2000:]
    assert sorted(losses(run)) == [1, 2, 3, 4]
    assert artifacts.latest_checkpoint(run).name == "step_000004"


def test_resume_on_gpu_matches_uninterrupted_run(tiny_data, tmp_path):
    """test_pretrain's exact-resume check with train.device=cuda: optimizer, loader and the
    CUDA RNG (dropout) survive a checkpoint. GPU kernels may sum in another order from run to
    run, so equal within 1e-4 (restoring no RNG moves them by ~5e-3 on the CPU)."""
    common = [*GPU, "train.dtype=float32", "train.max_steps=16", "train.ckpt_interval=8",
              "train.eval_interval=8", "train.keep_last=5", "model.dropout=0.1"]  # fmt: skip
    full, part = tmp_path / "full", tmp_path / "part"
    pretrain(config(tiny_data, full, *common))
    mid = full / "checkpoints" / "step_000008"
    pretrain(config(tiny_data, part, *common, f"train.resume={mid}"))
    a, b = losses(full), losses(part)
    assert sorted(b) == list(range(9, 17))
    assert all(abs(a[s] - b[s]) <= 1e-4 for s in b), (a, b)
    wa = artifacts.read_weights(full / "checkpoints/step_000016/model.safetensors")
    wb = artifacts.read_weights(part / "checkpoints/step_000016/model.safetensors")
    assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) <= 1e-4


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_ddp_equal_one_gpu(tiny_data, tmp_path):
    """torchrun --nproc_per_node=2 on NCCL == one GPU with grad_accum 2 (the same global batch)."""
    test_pretrain.assert_two_ranks_equal_one(tiny_data, tmp_path, [*test_pretrain.DIST, *GPU])

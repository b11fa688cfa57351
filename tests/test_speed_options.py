"""The CPU speed paths compute what the plain ones do: fused dropout and attention, the
per-core decode GEMV, and activation checkpointing (same gradients)."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from gptkit.model import fused
from gptkit.model.generate import generate
from gptkit.model.gpt import GPT, GPTConfig


@contextlib.contextmanager
def threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def qkv(B=2, H=3, T=16, hs=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, T, hs, generator=g, dtype=dtype, requires_grad=True) for _ in "qkv"]


def test_fused_attention_without_drops_equals_sdpa_forward_and_backward():
    q, k, v = qkv()
    y = fused._Attention.apply(q, k, v, None, 1e-9)  # rounds to a keep-everything mask
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y)
    ours, theirs = torch.autograd.grad(y, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_fused_attention_gradients_with_dropout(masked):
    """Backward recomputes the probabilities and replays the saved mask: gradcheck in float64."""
    q, k, v = qkv(B=1, H=2, T=6, hs=4, dtype=torch.float64)  # small: gradcheck is O(inputs)
    mask = None
    if masked:  # a block-diagonal (two documents) causal mask, as packed rows use
        seg = torch.tensor([0] * 2 + [1] * 4)
        mask = ((seg[:, None] == seg[None]) & torch.ones(6, 6, dtype=torch.bool).tril())[None, None]

    def f(q, k, v):
        torch.manual_seed(1)  # the same dropout mask on every call gradcheck makes
        return fused._Attention.apply(q, k, v, mask, 0.3)

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_fused_dropout_rate_scale_and_gradient():
    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    y = fused._Dropout.apply(x, 0.2)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.005
    # 1 / (1 - p), with p rounded to 1/65536
    assert torch.allclose(y[kept], torch.tensor(1.25), rtol=1e-5)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d/dx of x * mask * scale at x = 1
    torch.manual_seed(0)
    assert torch.equal(fused._Dropout.apply(torch.ones(200_000), 0.2), y.detach())  # seeded


def test_training_with_dropout_saves_no_attention_matrices():
    """The point of the fused attention: no T x T float tensor outlives a layer's forward."""
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=97, dropout=0.2)
    model = GPT(cfg).train()
    saved = []
    hooks = (lambda t: saved.append((t.shape, t.dtype)) or t, lambda t: t)
    with torch.autograd.graph.saved_tensors_hooks(*hooks):
        model(torch.randint(0, 97, (2, 32))).sum().backward()
    square = [s for s, d in saved if len(s) == 4 and s[-1] == s[-2] == 32 and d.is_floating_point]
    assert not square, f"attention probabilities kept for backward: {square}"
    assert any(len(s) == 4 and s[-1] == s[-2] == 32 and d == torch.bool for s, d in saved)


@pytest.mark.parametrize("family", ["gpt2", "modern"])
def test_activation_checkpointing_gives_the_same_gradients(family):
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=97, dropout=0.2,
                    family=family)  # fmt: skip
    torch.manual_seed(0)
    model = GPT(cfg).train()
    x = torch.randint(0, 97, (2, 32))
    grads = []
    for recompute in (False, True):
        model.transformer.checkpoint_blocks = recompute
        model.zero_grad()
        torch.manual_seed(5)  # the same dropout masks in both runs
        F.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.fixture
def split_small(monkeypatch):
    """Let the per-core GEMV run on test-sized matrices too."""
    monkeypatch.setattr(fused, "SPLIT_MIN_WEIGHTS", 0)


def test_decode_gemv_split_equals_linear(split_small):
    layer = torch.nn.Linear(32, 96)
    x = torch.randn(1, 1, 32)
    with threads(2), torch.no_grad():
        torch.testing.assert_close(fused.linear(layer, x), layer(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_text_is_unchanged_by_the_decode_gemv(family, split_small):
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=97, family=family)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    for p in model.parameters():  # larger weights: greedy text that is not one repeated token
        p.data.mul_(4)
    idx = torch.randint(0, 97, (1, 5))
    out = {}
    for n in (1, 2):  # one thread: plain F.linear; two: one GEMV per core
        with threads(n):
            out[n] = torch.stack(list(generate(model, idx, max_new_tokens=40, temperature=0)), 1)
    assert len(set(out[1][0].tolist())) > 3
    assert torch.equal(out[1], out[2])


def test_pretrain_with_activation_checkpointing_has_the_same_losses(tiny_data, tmp_path):
    """The train.activation_checkpointing knob end to end: identical losses with dropout on."""
    import json

    from conftest import TINY

    from gptkit.commands.pretrain import pretrain
    from gptkit.config import load_config

    curves = []
    for mode in ("none", "blocks"):
        run = tmp_path / mode
        pretrain(load_config(None, [*TINY, f"data.dir={tiny_data}", f"train.out_dir={run}",
                                    "train.max_steps=4", "train.warmup_steps=0",
                                    "train.eval_interval=0", "model.dropout=0.2",
                                    f"train.activation_checkpointing={mode}"]))  # fmt: skip
        rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
        curves.append([r["loss"] for r in rows if "loss" in r])
    assert len(curves[0]) == 4
    torch.testing.assert_close(curves[0], curves[1], rtol=1e-5, atol=0)

"""The speed paths compute what the plain ones do: fused dropout and attention, the MLP's
activation recomputed in backward, the one-token `Decoder` with its per-core GEMV, and
activation checkpointing (same gradients)."""

import contextlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from gptkit.model import decode, fused
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


@pytest.mark.parametrize("kind", ["gelu", "relu2", "swiglu"])
@pytest.mark.parametrize("bias", [True, False])
def test_activation_linear_equals_autograd_and_keeps_no_activation(kind, bias):
    from gptkit.model.gpt import activation

    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(24, 8, bias=bias)
    up = torch.randn(2, 5, 24, generator=g, requires_grad=True)
    gate = torch.randn(2, 5, 24, generator=g, requires_grad=True) if kind == "swiglu" else None
    out = torch.randn(2, 5, 8, generator=g)

    def act(u, gt):
        return activation(kind, u, gt)

    grads, kept = [], []  # kept: how many activation-sized tensors each kept for backward
    for fn in (lambda: layer(act(up, gate)), lambda: fused.activation_linear(act, up, gate, layer)):
        for t in (up, gate, *layer.parameters()):
            if t is not None:
                t.grad = None
        saved = []

        def pack(t, saved=saved):
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = fn()
        (y * out).sum().backward()
        grads.append([t.grad for t in (up, gate, *layer.parameters()) if t is not None])
        kept.append(saved.count(up.numel()))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # autograd also keeps the activation (for the projection's weight gradient) and, for relu2
    # and swiglu, an intermediate; the fused kernel keeps up [and gate] only
    assert kept == {"gelu": [2, 1], "relu2": [3, 1], "swiglu": [4, 2]}[kind]


def test_activation_linear_with_a_frozen_projection():
    """LoRA-style finetuning: the projection is frozen, the input still gets its gradient."""
    layer = torch.nn.Linear(16, 4).requires_grad_(False)
    up = torch.randn(3, 16, requires_grad=True)
    want = torch.autograd.grad(layer(torch.relu(up)).sum(), up)[0]
    got = torch.autograd.grad(
        fused.activation_linear(lambda u, _: torch.relu(u), up, None, layer).sum(), up
    )[0]
    torch.testing.assert_close(got, want)
    assert layer.weight.grad is None


@pytest.fixture
def split_small(monkeypatch):
    """Let the per-core GEMV run on test-sized matrices too."""
    monkeypatch.setattr(decode, "SPLIT_MIN_WEIGHTS", 0)


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_decode_gemv_split_equals_linear(split_small, rows):
    layer = torch.nn.Linear(32, 96)
    x = torch.randn(rows, 32)
    with threads(2), torch.no_grad():
        lin = decode._Linear(layer.weight, layer.bias)
        assert lin.threads == 2
        torch.testing.assert_close(lin(x), layer(x), rtol=1e-5, atol=1e-6)
        strided = torch.randn(32, rows).t()  # not contiguous
        torch.testing.assert_close(lin(strided), layer(strided), rtol=1e-5, atol=1e-6)


def test_a_full_kv_cache_is_refused_on_both_paths():
    model = _sharp_model("gpt2")
    cache = model.new_cache(1, max_len=4)
    with torch.no_grad():
        model.transformer(torch.zeros(1, 4, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="KV cache"):
            model.transformer(torch.zeros(1, 1, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="KV cache"):
            decode.Decoder(model).step(torch.zeros(1, dtype=torch.long), cache)


FAMILIES = {
    "gpt2": dict(family="gpt2"),
    "llama": dict(family="llama", n_head=4, n_kv_head=2),  # RoPE, SwiGLU, grouped-query
    "modern": dict(family="modern", n_head=4, n_kv_head=1),  # QK-norm, ReLU², soft cap
}


def _sharp_model(family: str) -> GPT:
    shape = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=97)
    cfg = GPTConfig(**{**shape, **FAMILIES[family]})
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    for p in model.parameters():  # larger weights: greedy text that is not one repeated token
        p.data.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_decoder_computes_what_the_modules_compute(family, padded, n_threads, split_small):
    """Logits and the KV cache after each one-token step: Decoder == the module path, for every
    family, left-padded batches (per-row positions, padding never attended) or not."""
    model = _sharp_model(family)
    idx = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]) if padded else None
    steps = torch.randint(0, 97, (6, 2), generator=torch.Generator().manual_seed(2))
    caches = [model.new_cache(2, max_len=11) for _ in range(2)]
    with threads(n_threads), torch.no_grad():
        decoder = decode.Decoder.build(model)
        for cache in caches:
            model.transformer(idx, attention_mask=mask, cache=cache)  # prefill
        for tok in steps:
            h = model.transformer(tok[:, None], cache=caches[0])
            want = model.head(h, wte=model.transformer.wte.weight)[:, -1]
            got = decoder.step(tok, caches[1])
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert caches[0].pos == caches[1].pos == 11
    for a, b in zip(caches[0].k + caches[0].v, caches[1].k + caches[1].v, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(caches[0].keep, caches[1].keep)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_text_is_unchanged_by_the_decoder(family, split_small, monkeypatch):
    model = _sharp_model(family)
    idx = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(1))
    out = {}
    with threads(2):  # the Decoder with one GEMV per core ...
        out["decoder"] = torch.stack(list(generate(model, idx, max_new_tokens=40, temperature=0)))
        monkeypatch.setattr(decode.Decoder, "build", staticmethod(lambda model: None))
        out["modules"] = torch.stack(list(generate(model, idx, max_new_tokens=40, temperature=0)))
    assert len(set(out["modules"].flatten().tolist())) > 3  # ... vs every step through the modules
    assert torch.equal(out["decoder"], out["modules"])


def test_decoder_leaves_unmerged_lora_and_other_heads_to_the_modules():
    from gptkit.model import lora
    from gptkit.model.heads import swap_head

    model = _sharp_model("gpt2")
    assert decode.Decoder.build(model) is not None
    assert decode.Decoder.build(model.train()) is None  # dropout: not a decoding model
    lora.inject(model.eval(), rank=2, alpha=4)
    assert decode.Decoder.build(model) is None
    lora.merge(model)
    assert decode.Decoder.build(model) is not None
    classifier = swap_head(model, {"name": "classification", "num_labels": 2})
    assert decode.Decoder.build(classifier) is None


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


MMAP_PROBE = """
import ctypes, sys, torch
from gptkit.train.runtime import fix_mmap_threshold
print(fix_mmap_threshold() if sys.argv[1] == "fix" else None)
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
big = torch.empty(16 << 20, dtype=torch.uint8)
del big  # freeing a mapped block raises glibc's threshold to its size
before = libc.mallinfo2().hblkhd  # bytes in mmapped blocks
x = torch.empty(4 << 20, dtype=torch.uint8)
print(libc.mallinfo2().hblkhd - before >= 4 << 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_fixed_mmap_threshold_keeps_big_tensors_out_of_the_heap():
    """After a big tensor is freed, glibc serves the next ones (< 32 MiB) from the heap, which
    keeps freed holes; runtime.setup fixes the threshold so they stay mapped (unmapped on free)."""

    def probe(mode, **env):
        run = subprocess.run([sys.executable, "-c", MMAP_PROBE, mode], capture_output=True,
                             text=True, env={**os.environ, **env}, check=True)  # fmt: skip
        return run.stdout.split()

    assert probe("dynamic") == ["None", "False"]  # the heap took it
    assert probe("fix") == ["True", "True"]  # its own mapping
    assert probe("fix", MALLOC_MMAP_THRESHOLD_="65536")[0] == "False"  # the user's choice stays
    assert probe("fix", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=65536")[0] == "False"

"""CPU training kernels where PyTorch's eager ops are slow or keep too much: dropout, attention
with dropout, and the MLP's activation.

Measured on the baby GPT (6L/6H/384, T 256, batch 64, dropout 0.2) on a 2-core CPU,
`scripts/profile_step.py`: `bernoulli_` drew dropout masks at ~70 M numbers/s (13% of a
step), and attention dropout forces SDPA onto its math path, which keeps three T×T tensors per
layer for backward (probabilities, mask, dropped probabilities: 225 MB a layer at that shape).

- `keep_mask` draws 64 random bits per generator call and compares 16-bit pieces against a
  threshold: one bit of work per 4 elements instead of one float per element (~6x faster).
  The keep probability is rounded to 1/65536 and the rescale uses that exact value.
- `dropout` saves only the boolean mask; `attention` (causal or with a boolean mask) saves
  q, k, v and the mask, and recomputes the probabilities in backward (one more QK^T matmul):
  the T×T activations never outlive a layer's forward.
- `activation_linear` (the MLP's activation and its output projection) keeps the activation's
  inputs and recomputes its (B, T, 4C) output in backward: 100 MB less per layer at that
  shape for one more elementwise pass.

Only for fp32 CPU training: CUDA has fused dropout and flash attention with dropout, and
torch.compile fuses these itself. The masks come from the default generator, so seeds,
resume and activation checkpointing (which restores that generator) stay exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def use_fused(x: torch.Tensor, p: float, training: bool) -> bool:
    """Whether the CPU kernels below apply: fp32 CPU training with dropout, not compiling."""
    return (
        training
        and p > 0
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.compiler.is_compiling()
    )


def keep_mask(shape, p: float, device=None) -> tuple[torch.Tensor, float]:
    """A boolean mask of `shape` keeping each element with probability ~1 - p, and 1 / that
    probability (exact for the 16-bit threshold used)."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), None)  # 64 uniform bits per draw
    dropped = round(p * 65536)  # of 65536 equally likely 16-bit values, this many drop
    keep = words.view(torch.int16)[:n].view(shape) >= dropped - 32768
    return keep, 65536 / (65536 - dropped)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p):
        keep, scale = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, with the fast mask on fp32 CPU training."""
    if use_fused(x, p, training):
        return _Dropout.apply(x, p)
    return F.dropout(x, p, training)


class Dropout(torch.nn.Dropout):
    """nn.Dropout (same name, no state) that uses `dropout` above."""

    def forward(self, x):
        if not self.training or self.p == 0:  # the common inference case: no calls at all
            return x
        return dropout(x, self.p, self.training)


_CAUSAL: dict = {}


def _hidden(T: int, S: int, device) -> torch.Tensor:
    """(T, S) True above the bottom-right-aligned diagonal: keys a causal query may not see."""
    key = (T, S, str(device))
    if key not in _CAUSAL:
        _CAUSAL[key] = torch.ones(T, S, dtype=torch.bool, device=device).triu(S - T + 1)
    return _CAUSAL[key]


def _probs(q, k, mask, scale):
    scores = torch.matmul(q * scale, k.transpose(-2, -1))
    if mask is None:
        scores.masked_fill_(_hidden(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    else:
        scores.masked_fill_(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, p):
        scale = q.shape[-1] ** -0.5
        probs = _probs(q, k, mask, scale)
        keep, keep_scale = keep_mask(probs.shape, p, q.device)
        probs = torch.where(keep, probs, 0.0).mul_(keep_scale)
        ctx.save_for_backward(q, k, v, mask, keep)
        ctx.scale, ctx.keep_scale = scale, keep_scale
        return torch.matmul(probs, v)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, mask, keep = ctx.saved_tensors
        probs = _probs(q, k, mask, ctx.scale)  # the forward's values, recomputed
        dropped = torch.where(keep, probs, 0.0).mul_(ctx.keep_scale)
        dv = torch.matmul(dropped.transpose(-2, -1), grad)
        del dropped
        dprobs = torch.matmul(grad, v.transpose(-2, -1))
        dprobs = torch.where(keep, dprobs, 0.0).mul_(ctx.keep_scale)
        dscores = torch._softmax_backward_data(dprobs, probs, -1, probs.dtype).mul_(ctx.scale)
        dq = torch.matmul(dscores, k)
        dk = torch.matmul(dscores.transpose(-2, -1), q)
        return dq, dk, dv, None, None


def attention(q, k, v, *, mask=None, is_causal=True, dropout_p=0.0, training=False):
    """F.scaled_dot_product_attention over (B, H, T, hs); `mask` is boolean (True = attend).
    With dropout in fp32 CPU training, the memory-saving kernel above."""
    if use_fused(q, dropout_p, training) and (mask is None) == is_causal:
        return _Attention.apply(q, k, v, mask, dropout_p)
    p = dropout_p if training else 0.0
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)


class _ActivationLinear(torch.autograd.Function):
    """F.linear(act(up, gate), weight, bias) that keeps `up` and `gate` for backward, not the
    activation: that (B, T, 4C) tensor is recomputed in backward from what the activation's own
    backward keeps anyway. The same arithmetic as autograd's, one more elementwise pass."""

    @staticmethod
    def forward(ctx, act, up, gate, weight, bias):
        ctx.act = act
        ctx.save_for_backward(up, gate, weight)
        ctx.has_bias = bias is not None
        return F.linear(act(up, gate), weight, bias)

    @staticmethod
    def backward(ctx, grad):
        up, gate, weight = ctx.saved_tensors
        _, need_up, need_gate, need_weight, need_bias = ctx.needs_input_grad
        up = up.detach().requires_grad_(need_up)
        if gate is not None:
            gate = gate.detach().requires_grad_(need_gate)
        with torch.enable_grad():
            a = ctx.act(up, gate)  # the forward's activation, recomputed
        rows = grad.reshape(-1, grad.shape[-1])
        dweight = rows.t().mm(a.detach().reshape(-1, a.shape[-1])) if need_weight else None
        dbias = rows.sum(0) if ctx.has_bias and need_bias else None
        dup = dgate = None
        wanted = [t for t in (up, gate) if t is not None and t.requires_grad]
        if wanted:
            grads = torch.autograd.grad(a, wanted, grad.matmul(weight))
            dup = grads[0] if up.requires_grad else None
            dgate = grads[-1] if gate is not None and gate.requires_grad else None
        return None, dup, dgate, dweight, dbias


def activation_linear(act, up, gate, layer: torch.nn.Module) -> torch.Tensor:
    """`layer(act(up, gate))`; in fp32 CPU training, without keeping the activation for backward
    (the baby GPT: 100 MB a layer at batch 64)."""
    if (
        type(layer) is torch.nn.Linear
        and torch.is_grad_enabled()
        and up.device.type == "cpu"
        and up.dtype == torch.float32
        and not torch.compiler.is_compiling()
    ):
        return _ActivationLinear.apply(act, up, gate, layer.weight, layer.bias)
    return layer(act(up, gate))

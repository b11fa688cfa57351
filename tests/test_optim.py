"""LR schedules as pure functions of the step, and AdamW parameter groups."""

import math

import pytest

from gptkit.config import TrainConfig
from gptkit.model.gpt import GPT
from gptkit.train.optim import build_optimizer, lr_at


def cfg(**kw):
    base = dict(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    return TrainConfig(**{**base, **kw})


def test_warmup_is_linear_and_reaches_peak():
    c = cfg()
    assert lr_at(0, c) == pytest.approx(0.1)
    assert lr_at(4, c) == pytest.approx(0.5)
    assert lr_at(10, c) == pytest.approx(1.0)


def test_cosine_ends_at_min_lr_and_halfway_is_the_mean():
    c = cfg(schedule="cosine")
    assert lr_at(60, c) == pytest.approx(0.55)
    assert lr_at(110, c) == pytest.approx(0.1)
    values = [lr_at(s, c) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False)), "cosine must not rise"


def test_linear_constant_and_wsd():
    assert lr_at(60, cfg(schedule="linear")) == pytest.approx(0.55)
    assert lr_at(100, cfg(schedule="constant")) == 1.0
    w = cfg(schedule="wsd", decay_fraction=0.2)  # decay starts at step 88
    assert lr_at(87, w) == 1.0
    assert lr_at(99, w) == pytest.approx(1.0 + (11 / 22) * (0.1 - 1.0))
    assert lr_at(110, w) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices(tiny_config):
    model = GPT(tiny_config)
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1), device_type="cpu")
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            expect = 0.1 if p.dim() >= 2 else 0.0
            assert group["weight_decay"] == expect, names[id(p)]
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters())
    assert math.isfinite(n_opt)

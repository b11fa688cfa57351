"""LoRA: adapters start as a no-op, leave the base weights untouched, and merge exactly."""

import copy

import pytest
import torch

from gptkit.model.gpt import GPT, GPTConfig
from gptkit.model.heads import swap_head
from gptkit.model.lora import LoRALinear, freeze_for_lora, inject, is_lora_param, merge

CFG = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=257)


def _lora_model(targets=("c_attn", "c_proj", "c_fc")):
    torch.manual_seed(0)
    model = swap_head(GPT(CFG), {"name": "classification", "num_labels": 2})
    base = copy.deepcopy(model)
    n = inject(model.transformer, rank=4, alpha=8, targets=targets)
    return model, base, n


def test_inject_wraps_targets_and_starts_as_a_no_op():
    model, base, n = _lora_model()
    assert n == CFG.n_layer * 4  # c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj per block
    assert isinstance(model.transformer.h[0].attn.c_attn, LoRALinear)
    idx = torch.randint(0, 256, (2, 10))
    torch.testing.assert_close(model(idx), base(idx), atol=0, rtol=0)  # B = 0 at the start


def test_training_leaves_base_bit_identical_and_merge_matches_adapters():
    model, base, _ = _lora_model()
    trainable = freeze_for_lora(model, keep=("head.",))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(is_lora_param(n) or n.startswith("head.") for n in names)
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    idx, y = torch.randint(0, 256, (8, 12)), torch.randint(0, 2, (8,))
    for _ in range(5):
        loss = model.head.loss(model(idx), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    before = base.transformer.state_dict()
    for key, value in model.transformer.state_dict().items():
        if not is_lora_param(key):
            assert torch.equal(value, before[key.replace(".base.", ".")]), key
    assert model.transformer.h[0].attn.c_attn.lora_B.abs().sum() > 0  # adapters did learn
    model.eval()
    with torch.no_grad():
        adapted = model(idx)
        assert merge(model.transformer) == CFG.n_layer * 4
        merged = model(idx)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(base.state_dict())  # plain GPT keys again
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)


def test_unknown_target_names_the_choices():
    with pytest.raises(ValueError, match="no Linear layer named.*c_attn"):
        _lora_model(targets=("q_proj",))

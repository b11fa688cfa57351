"""The GPT-2 model: causality, KV cache == full forward, init loss, overfitting, padding, masks.

Everything runs on the `tiny_config` model from conftest (2 layers, width 32, vocab 97), except the
parameter count, which builds GPT-2 small on the meta device (no memory, no time).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from gptkit.model.gpt import GPT, GPTConfig


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(0)
    m = GPT(tiny_config).eval()
    with torch.no_grad():  # sharper than the 0.02 init, so differences are not hidden by scale
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def _idx(config, B=2, T=None, seed=1):
    T = T or config.block_size
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (B, T), generator=g)


@torch.no_grad()
def test_causal_future_tokens_do_not_change_past_logits(model, tiny_config):
    idx = _idx(tiny_config)
    t = 10
    changed = idx.clone()
    changed[:, t + 1] = (changed[:, t + 1] + 1) % tiny_config.vocab_size
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1], b[:, t + 1])


@torch.no_grad()
def test_kv_cache_one_token_per_step_equals_full_forward(model, tiny_config):
    idx = _idx(tiny_config)
    full = model(idx)
    cache = model.new_cache(2)
    steps = [model(idx[:, :8], cache=cache)]
    steps += [model(idx[:, t : t + 1], cache=cache) for t in range(8, idx.shape[1])]
    assert cache.pos == idx.shape[1]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


@torch.no_grad()
def test_kv_cache_chunked_prefill_equals_full_forward(model, tiny_config):
    idx = _idx(tiny_config)
    full = model(idx)
    cache = model.new_cache(2)
    chunks = [model(idx[:, a:b], cache=cache) for a, b in ((0, 5), (5, 17), (17, 18), (18, 32))]
    assert torch.allclose(torch.cat(chunks, dim=1), full, atol=1e-5)
    cache.reset()  # a reset cache behaves like a new one
    assert torch.allclose(model(idx[:, :9], cache=cache), full[:, :9], atol=1e-5)


@torch.no_grad()
def test_loss_at_init_is_log_vocab(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    idx = _idx(tiny_config, B=8)
    logits = model(idx[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
    assert abs(loss.item() - math.log(tiny_config.vocab_size)) < 0.1


def test_tiny_model_overfits_one_batch(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    idx = _idx(tiny_config, B=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _step in range(300):
        logits = model(idx[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        if loss.item() < 0.1:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1, f"loss {loss.item():.3f} after 300 steps"


@torch.no_grad()
def test_vocab_is_padded_and_logits_cropped(model, tiny_config):
    assert tiny_config.padded_vocab_size == 128
    assert GPTConfig(vocab_size=50257).padded_vocab_size == 50304
    assert GPTConfig(vocab_size=50257, pad_vocab_to=1).padded_vocab_size == 50257
    assert model.transformer.wte.weight.shape == (128, tiny_config.n_embd)
    assert model(_idx(tiny_config, T=7)).shape == (2, 7, tiny_config.vocab_size)


@torch.no_grad()
def test_left_and_right_padding_give_the_same_last_hidden_state(model, tiny_config):
    seq = _idx(tiny_config, B=1, T=9)
    pad = torch.zeros(1, 4, dtype=torch.long)
    ones, zeros = torch.ones(1, 9, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)
    right = model.transformer(torch.cat([seq, pad], 1), attention_mask=torch.cat([ones, zeros], 1))
    left = model.transformer(torch.cat([pad, seq], 1), attention_mask=torch.cat([zeros, ones], 1))
    plain = model.transformer(seq)
    assert torch.allclose(right[:, 8], plain[:, 8], atol=1e-5)
    assert torch.allclose(left[:, -1], plain[:, 8], atol=1e-5)
    assert torch.isfinite(left).all(), "rows of pure padding must not produce NaN"


def test_sequence_longer_than_block_size_is_refused(model, tiny_config):
    with pytest.raises(ValueError, match="block_size"):
        model(_idx(tiny_config, T=tiny_config.block_size + 1))


def test_num_params_and_flops_match_gpt2_small():
    config = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)
    with torch.device("meta"):
        gpt2 = GPT(GPTConfig(**{**_fields(config), "pad_vocab_to": 1}))
        padded = GPT(config)
    assert gpt2.num_params(non_embedding=False) == 124_439_808  # HF's count for gpt2
    assert gpt2.num_params() == 124_439_808 - 1024 * 768
    assert padded.num_params() == gpt2.num_params() + (50304 - 50257) * 768
    flops = padded.flops_per_token()
    assert flops == 6 * padded.num_params() + 12 * 12 * 768 * 1024
    assert 7e8 < flops < 9e8


def _fields(config):
    return {name: getattr(config, name) for name in config.__slots__}


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=100, n_head=3)

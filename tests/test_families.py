"""Model families (gpt2 | llama | modern): presets, causality, cached generation, training.

Every family is one `GPT` configured differently, so the same properties are checked for each:
future tokens never change past logits, the KV cache (with GQA) equals a full forward, greedy
decoding with the cache equals full recompute past the context, and a run trains, resumes bit
for bit and gives the same losses on 2 gloo ranks as on 1.
"""

import dataclasses

import pytest
import test_generate
import test_pretrain
import torch
from test_pretrain import config, losses

from gptkit.commands.pretrain import pretrain
from gptkit.config import load_config
from gptkit.configfile import ConfigError
from gptkit.model.gpt import GPT, GPTConfig

FAMILIES = ["gpt2", "llama", "modern"]
SHAPE = dict(n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=97)


def _model(family, seed=0, std=0.3, **kw):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**SHAPE, "family": family, **kw}))
    with torch.no_grad():  # sharp distributions: greedy never hinges on float noise
        for p in model.parameters():
            p.normal_(0, std)
    return model.eval()


def test_presets_fill_unset_keys_and_explicit_keys_win():
    llama = GPTConfig(family="llama", n_head=4)
    assert (llama.pos_emb, llama.norm, llama.mlp, llama.bias) == (
        "rope",
        "rmsnorm",
        "swiglu",
        False,
    )
    assert llama.n_kv_head == 2 and not llama.tie_embeddings
    modern = GPTConfig(family="modern", logit_softcap=0.0, n_kv_head=1)
    assert modern.qk_norm and modern.mlp == "relu2" and not modern.norm_gain
    assert modern.logit_softcap == 0.0 and modern.n_kv_head == 1
    assert GPTConfig() == GPTConfig(family="gpt2", pos_emb="learned", bias=True)


def test_print_config_shows_the_resolved_family(capsys):
    from gptkit.cli import main

    assert main(["pretrain", "model.family=llama", "model.n_head=4", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "pos_emb: rope" in out and "n_kv_head: 2" in out and "mlp: swiglu" in out


@pytest.mark.parametrize(
    "overrides, keys",
    [
        (["model.n_head=6", "model.n_kv_head=4"], ("model.n_head", "model.n_kv_head")),
        (["model.family=llama", "model.n_embd=36", "model.n_head=4", "model.head_dim=9"],
         ("model.pos_emb", "model.head_dim")),
        (["model.norm=layernorm", "model.norm_gain=false", "model.bias=true"],
         ("model.norm_gain", "model.bias")),
        (["model.family=lama"], ("model.family",)),
    ],
)  # fmt: skip
def test_invalid_combinations_fail_at_load_naming_both_keys(overrides, keys):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert all(k in str(e.value) for k in keys), str(e.value)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_future_tokens_never_change_past_logits(family):
    model = _model(family, std=0.05)
    idx = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[:, 11] = (changed[:, 11] + 1) % 97
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :11], b[:, :11])
    assert not torch.allclose(a[:, 11], b[:, 11])


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_kv_cache_with_grouped_heads_equals_full_forward(family):
    model = _model(family, std=0.05)
    idx = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(2))
    full = model(idx)
    cache = model.new_cache(2)
    assert cache.k[0].shape == (2, model.config.n_kv_head, 32, 8)
    steps = [model(idx[:, a:b], cache=cache) for a, b in ((0, 7), (7, 20), (20, 21), (21, 32))]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_with_cache_equals_full_recompute_past_the_context(family):
    model = _model(family, block_size=16)
    idx = test_generate._prompt(B=2, T=5)
    out = test_generate._run(model, idx, max_new_tokens=40, temperature=0)
    assert torch.equal(out, test_generate._greedy_reference(model, idx, 40))


def test_untied_head_and_softcap():
    model = _model("modern", std=1.0)
    assert model.head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    logits = model(torch.randint(0, 97, (1, 8)))
    assert logits.abs().max() < 15.0  # soft-capped; an uncapped std-1 model goes far past it
    assert "transformer.wpe.weight" not in model.state_dict()  # RoPE: no position table


def test_zero_init_projections_make_blocks_start_as_identity():
    model = GPT(GPTConfig(**SHAPE, family="modern"))
    assert all((p == 0).all() for n, p in model.named_parameters() if n.endswith("c_proj.weight"))


FAMILY_RUN = ["train.max_steps=12", "train.ckpt_interval=6", "train.eval_interval=6",
              "train.keep_last=5"]  # fmt: skip


@pytest.mark.parametrize("family", ["llama", "modern"])
def test_family_trains_and_resumes_bit_for_bit(tiny_data, tmp_path, family):
    common = [*FAMILY_RUN, f"model.family={family}", "model.n_head=2"]
    full = tmp_path / "full"
    pretrain(config(tiny_data, full, *common))
    a = losses(full)
    assert a[12] < a[1] - 0.5, a  # it learns
    part = tmp_path / "part"
    mid = full / "checkpoints" / "step_000006"
    pretrain(config(tiny_data, part, *common, f"train.resume={mid}"))
    b = losses(part)
    assert sorted(b) == list(range(7, 13))
    assert all(a[s] == b[s] for s in b), (a, b)


@pytest.mark.parametrize("family", ["llama", "modern"])
def test_family_two_gloo_ranks_equal_one_rank(tiny_data, tmp_path, family):
    common = [*test_pretrain.DIST, f"model.family={family}", "model.n_head=2"]
    test_pretrain.assert_two_ranks_equal_one(tiny_data, tmp_path, common)


def test_head_dim_independent_of_width():
    c = GPTConfig(**{**SHAPE, "family": "llama", "head_dim": 16})
    model = GPT(c)
    assert model.transformer.h[0].attn.c_attn.weight.shape == ((4 + 2 * 2) * 16, 32)
    assert model(torch.randint(0, 97, (1, 5))).shape == (1, 5, 97)
    assert dataclasses.replace(c, dropout=0.1).head_dim == 16


@pytest.mark.parametrize("family", FAMILIES)
def test_ragged_batch_rows_equal_each_prompt_alone(family):
    """Left-padded prompts of different lengths, decoded together, give each prompt's own
    greedy tokens (positions count real tokens; padding is never attended)."""
    model = _model(family, block_size=32)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 97, (n,), generator=g) for n in (3, 9, 6)]
    T = max(len(p) for p in prompts)
    idx = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, p in enumerate(prompts):
        idx[i, T - len(p) :], mask[i, T - len(p) :] = p, 1
    batched = test_generate._run(model, idx, attention_mask=mask, max_new_tokens=15, temperature=0)
    for i, p in enumerate(prompts):
        alone = test_generate._run(model, p[None], max_new_tokens=15, temperature=0)
        assert torch.equal(batched[i], alone[0]), i


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_packed_row_with_document_mask_equals_each_document_alone(family):
    model = _model(family, std=0.05)
    g = torch.Generator().manual_seed(7)
    docs = [torch.randint(0, 97, (n,), generator=g) for n in (5, 11, 8)]
    row = torch.cat(docs)[None]
    segments = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    packed = model(row, segments=segments)[0]
    alone = torch.cat([model(d[None])[0] for d in docs])
    assert torch.allclose(packed, alone, atol=1e-5)
    assert not torch.allclose(model(row)[0], alone, atol=1e-3)  # without the mask they mix

"""Heads: registry, `last`/`mean` pooling under left and right padding, backbone swap, losses."""

import pytest
import torch

from gptkit import artifacts
from gptkit.config import Config, to_dict
from gptkit.errors import GptkitError
from gptkit.model.gpt import GPT, GPTConfig
from gptkit.model.heads import HEADS, backbone_state, build_head, pool, swap_head
from gptkit.train import checkpoint

CFG = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=257)


def _padded(seqs, pad_id, *, left):
    """(idx, mask) with each sequence padded on the left or right to the longest."""
    T = max(map(len, seqs))
    idx = torch.full((len(seqs), T), pad_id)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for b, s in enumerate(seqs):
        sl = slice(T - len(s), T) if left else slice(0, len(s))
        idx[b, sl], mask[b, sl] = torch.tensor(s), 1
    return idx, mask


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooling_same_for_left_and_right_padding(pooling):
    torch.manual_seed(0)
    model = swap_head(GPT(CFG), {"name": "classification", "num_labels": 3, "pooling": pooling})
    model.eval()
    # the last sequence ends with the pad id (256 = end-of-text) as a real token
    seqs = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [9, 256], [1, 2, 3, 256]]
    with torch.no_grad():
        idx, mask = _padded(seqs, 256, left=False)
        right = model(idx, attention_mask=mask)
        idx, mask = _padded(seqs, 256, left=True)
        left = model(idx, attention_mask=mask)
        alone = torch.cat([model(torch.tensor([s])) for s in seqs])
    assert right.shape == (4, 3)
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, right, atol=1e-5, rtol=0)  # padding changes nothing
    assert torch.equal(left.argmax(-1), right.argmax(-1))


def test_last_pooling_reads_the_mask_not_token_ids():
    h = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    assert pool(h, mask, "last").flatten().tolist() == [2.0, 7.0]
    assert pool(h, mask, "mean").flatten().tolist() == [1.0, 6.0]


def test_registry_and_unknown_head():
    assert set(HEADS) == {"lm", "classification", "regression", "token_classification"}
    with pytest.raises(ValueError, match="unknown head 'clasification'.*classification"):
        build_head({"name": "clasification"}, CFG)


def test_backbone_loads_bit_identical_under_a_new_head(tmp_path):
    torch.manual_seed(0)
    src = GPT(CFG)
    meta = {
        "config": to_dict(Config(model=CFG)),
        "tokenizer": {"kind": "byte"},
        "head": {"name": "lm"},
    }
    checkpoint.save(tmp_path, step=1, model=src, state={}, meta=meta, keep_last=1)
    art = artifacts.resolve(tmp_path)
    model, head, tok = art.load_model(), art.head, art.tokenizer()
    assert head == {"name": "lm"} and tok.eot_id == 256
    swap_head(model, {"name": "token_classification", "num_labels": 5})
    saved = artifacts.read_weights(artifacts.find_checkpoint(tmp_path) / "model.safetensors")
    got = model.transformer.state_dict()
    assert set(got) == set(backbone_state(saved))
    assert all(torch.equal(got[k], v) for k, v in backbone_state(saved).items())
    assert {k.split(".")[0] for k in model.state_dict()} == {"transformer", "head"}


def test_regression_head_fits_a_linear_target():
    torch.manual_seed(0)
    head = build_head({"name": "regression", "num_targets": 2, "pooling": "mean"}, CFG)
    h = torch.randn(256, 5, CFG.n_embd)
    mask = torch.ones(256, 5, dtype=torch.long)
    w, b = torch.randn(CFG.n_embd, 2), torch.tensor([1.0, -2.0])
    target = pool(h, mask, "mean") @ w + b
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(300):
        loss = head.loss(head(h, attention_mask=mask), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3 * target.var().item()


def test_token_head_ignores_unlabelled_positions():
    torch.manual_seed(0)
    head = build_head({"name": "token_classification", "num_labels": 3}, CFG)
    h = torch.randn(2, 4, CFG.n_embd)
    target = torch.tensor([[0, -100, 2, -100], [-100, 1, -100, -100]])
    out = head(h)
    want = torch.nn.functional.cross_entropy(out[target != -100], target[target != -100])
    torch.testing.assert_close(head.loss(out, target), want)


def test_unknown_head_in_config_is_a_user_error():
    from gptkit.commands.finetune import _check_head_name

    with pytest.raises(GptkitError, match="did you mean 'regression'"):
        _check_head_name("regresion")

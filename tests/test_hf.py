"""Hugging Face GPT-2 conversion: logits parity both ways, .bin and 4.x files, clear refusals.

The reference is a random-weight `transformers.GPT2LMHeadModel` built offline; a correct port
matches it to ~2e-6 in fp32, and 1e-4 catches a missed transpose, erf GELU or a wrong LN eps.
"""

import json
import time

import pytest
import torch

from gptkit.errors import GptkitError
from gptkit.model.gpt import GPT, GPTConfig
from gptkit.model.hf import is_hf_dir, load_hf, save_hf

transformers = pytest.importorskip("transformers")

TOL = 1e-4


def _hf_model(vocab_size=1000, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=vocab_size
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # HF zero-inits biases; randomise them so a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    return model


def _idx(vocab_size=1000, T=40):
    return torch.randint(0, vocab_size, (2, T), generator=torch.Generator().manual_seed(1))


def _max_diff(ours: GPT, hf, idx) -> float:
    with torch.no_grad():
        return (ours(idx) - hf(idx).logits).abs().max().item()


def test_load_hf_matches_transformers(tmp_path):
    hf = _hf_model()
    hf.save_pretrained(tmp_path)
    assert is_hf_dir(tmp_path)
    ours = load_hf(tmp_path)
    assert ours.config.block_size == 128 and ours.config.vocab_size == 1000
    assert ours.config.padded_vocab_size % 64 == 0
    assert _max_diff(ours, hf, _idx()) <= TOL


def test_save_hf_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    ours = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=128, vocab_size=1000)).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    save_hf(ours, tmp_path / "out")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert _max_diff(ours, hf, _idx()) <= TOL
    assert not list(tmp_path.glob(".out.tmp-*")), "temporary folder left behind"


def test_save_hf_without_bias_writes_zero_biases(tmp_path):
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=100, bias=False)
    ours = GPT(cfg).eval()
    save_hf(ours, tmp_path / "out")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert _max_diff(ours, hf, _idx(100)) <= TOL


def test_save_hf_refuses_non_empty_dir(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    ours = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50))
    with pytest.raises(GptkitError, match="not empty"):
        save_hf(ours, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_pytorch_model_bin_with_4x_buffers_loads(tmp_path):
    """A transformers 4.x-style pytorch_model.bin: no prefix check, attn.bias/masked_bias buffers."""
    hf = _hf_model()
    state = {k: v.clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(128, 128)).view(
            1, 1, 128, 128
        )
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({**hf.config.to_dict(), "n_ctx": 128}))
    assert _max_diff(load_hf(tmp_path), hf, _idx()) <= TOL


def test_gpt2model_keys_without_prefix_load(tmp_path):
    hf = _hf_model()
    hf.transformer.save_pretrained(tmp_path)  # GPT2Model: keys have no `transformer.` prefix
    assert _max_diff(load_hf(tmp_path), hf, _idx()) <= TOL


def test_non_gpt2_config_is_refused(tmp_path):
    _hf_model().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "falcon"}))
    with pytest.raises(GptkitError, match="'falcon'"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "activation_function": "relu"}))
    with pytest.raises(GptkitError, match="activation_function"):
        load_hf(tmp_path)


def test_not_an_hf_dir(tmp_path):
    assert not is_hf_dir(tmp_path)
    with pytest.raises(GptkitError, match="not a Hugging Face model dir"):
        load_hf(tmp_path)


def test_hub_name_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(GptkitError, match="local folder"):
        load_hf("hf:gptkit-test/does-not-exist")
    assert time.perf_counter() - t0 < 10


def test_other_heads_are_ignored_and_bad_shapes_refused(tmp_path):
    hf = _hf_model()
    cls = transformers.GPT2ForSequenceClassification(hf.config).eval()
    cls.transformer.load_state_dict(hf.transformer.state_dict())
    cls.save_pretrained(tmp_path)  # transformer.* plus score.weight
    assert _max_diff(load_hf(tmp_path), hf, _idx()) <= TOL
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "n_head": 3}))
    with pytest.raises(GptkitError, match="divisible"):
        load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "n_layer": 3}))
    with pytest.raises(GptkitError, match="missing"):
        load_hf(tmp_path)

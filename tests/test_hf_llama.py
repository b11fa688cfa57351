"""Hugging Face Llama / Qwen2 / Qwen3 <-> gptkit: logits parity both ways, greedy parity, refusals.

References are random small `transformers` models built in the test and saved with
`save_pretrained`; a correct port matches in fp32 to ~1e-6, and 1e-4 catches a wrong RoPE
layout, a swapped gate/up, a missing bias or QK-norm.
"""

import json

import pytest
import torch

from gptkit import artifacts
from gptkit.cli import main
from gptkit.errors import GptkitError
from gptkit.model.generate import generate
from gptkit.model.gpt import GPT, GPTConfig
from gptkit.model.hf import load_hf, save_hf

transformers = pytest.importorskip("transformers")

TOL = 1e-4
SHAPE = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-6)  # fmt: skip
CASES = {
    "llama-gqa-untied": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                         dict(num_key_value_heads=2, tie_word_embeddings=False, rope_theta=500.0)),
    "llama-mqa-tied": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                       dict(num_key_value_heads=1, tie_word_embeddings=True)),
    "llama-bias": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                   dict(num_key_value_heads=2, attention_bias=True, mlp_bias=True)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
              dict(num_key_value_heads=2, head_dim=32, tie_word_embeddings=False)),
}  # fmt: skip


def _hf(case: str, seed=0, std=0.02):
    config_cls, model_cls, extra = CASES[case]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**SHAPE, **extra)).eval()
    with torch.no_grad():  # randomise everything (norm gains and biases too) so a bad map shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


def _idx(T=24):
    return torch.randint(0, 300, (2, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("case", list(CASES))
def test_hf_model_loads_with_the_same_logits(tmp_path, case):
    hf = _hf(case)
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    assert ours.config.family == "llama" and ours.config.vocab_size == 300
    with torch.no_grad():
        diff = (ours(_idx()) - hf(_idx()).logits).abs().max().item()
    assert diff <= TOL, diff


@pytest.mark.parametrize("case", list(CASES))
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, case):
    ours = load_hf(_save(_hf(case), tmp_path / "src"))
    save_hf(ours, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == case.split("-")[0]
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        diff = (ours(_idx()) - back(_idx()).logits).abs().max().item()
    assert diff <= TOL, diff


def _save(model, path):
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("case", ["llama-gqa-untied", "qwen3"])
def test_greedy_generation_matches_transformers_generate(tmp_path, case):
    hf = _hf(case, std=0.3)  # sharp distributions: no ties decided by float noise
    ours = load_hf(_save(hf, tmp_path))
    idx = _idx(T=6)[:1]
    ref = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=20,
                      do_sample=False, min_new_tokens=20, pad_token_id=0)[:, 6:]  # fmt: skip
    out = torch.stack(list(generate(ours, idx, max_new_tokens=20, temperature=0)), dim=1)
    assert torch.equal(out, ref)


def test_bf16_weights_are_upcast(tmp_path):
    hf = _hf("llama-gqa-untied")
    hf.to(torch.bfloat16).save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    assert ours.transformer.wte.weight.dtype == torch.float32
    # the reference reads the same bf16 file into fp32 (a .float() of the live model would keep
    # its bf16-rounded RoPE frequencies)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (ours(_idx()) - ref(_idx()).logits).abs().max() <= TOL


@pytest.mark.parametrize(
    "change, key",
    [
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}},
         "rope_type"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"model_type": "mixtral"}, "'mixtral'"),
    ],
)  # fmt: skip
def test_configs_that_do_not_map_are_refused_naming_the_key(tmp_path, change, key):
    _hf("qwen2").save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(GptkitError, match=key):
        load_hf(tmp_path)


def test_cli_eval_sample_and_export_of_a_llama_dir(tmp_path, capsys, tiny_data):
    hf_dir = _save(_hf("llama-gqa-untied"), tmp_path / "llama")
    # the byte data's ids (< 257) fit the 300-token vocabulary
    assert (
        main(["eval", str(hf_dir), "--data", str(tiny_data), "--max-batches", "1", "--json"]) == 2
    )
    assert "vocab mismatch" in capsys.readouterr().err  # no tokenizer: gpt2 is assumed
    assert main(["export", str(hf_dir), "--format", "hf", "--out", str(tmp_path / "x")]) == 0
    assert artifacts.resolve(tmp_path / "x").load_model().config.n_kv_head == 2


def test_modern_family_export_is_refused_with_the_key(tmp_path):
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50,
                          family="modern"))  # fmt: skip
    with pytest.raises(GptkitError, match="model.norm_gain=False has no Hugging Face equivalent"):
        save_hf(model, tmp_path / "out")


def test_llama_family_run_exports_as_a_llama_dir(tiny_data, tmp_path, capsys):
    from test_pretrain import config

    from gptkit.commands.pretrain import pretrain

    run = tmp_path / "run"
    pretrain(config(tiny_data, run, "train.max_steps=2", "train.eval_interval=0",
                    "model.family=llama", "model.n_head=2"))  # fmt: skip
    out = tmp_path / "hf"
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    ours = artifacts.load_model(run)
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    idx = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (ours(idx) - back(idx).logits).abs().max() <= TOL
    # and the exported dir is a model path like any other, with the run's byte tokenizer
    assert artifacts.resolve(out).tokenizer().spec() == artifacts.resolve(run).tokenizer().spec()

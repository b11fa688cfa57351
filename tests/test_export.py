"""`gptkit export`: HF GPT-2 dirs that transformers loads with the same logits (LoRA merged),
bare safetensors + config.json that rebuild the model, and refusals that never overwrite."""

import json

import pytest
import torch

from gptkit import artifacts
from gptkit.cli import main
from gptkit.commands.export import export
from gptkit.config import Config, to_dict
from gptkit.data.tokenizer import get_tokenizer
from gptkit.errors import GptkitError
from gptkit.model.gpt import GPT, GPTConfig
from gptkit.model.heads import build_head
from gptkit.model.lora import inject
from gptkit.train import checkpoint

CFG = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=257)


def save_run(root, name, *, head=None, lora=None):
    """A checkpointed run with random weights (and random LoRA adapters when `lora`)."""
    head = head or {"name": "lm"}
    torch.manual_seed(0)
    model = GPT(CFG, head=build_head(head, CFG))
    meta = {"config": to_dict(Config(model=CFG)), "tokenizer": get_tokenizer("byte").spec(),
            "head": head}  # fmt: skip
    if lora:
        inject(model.transformer, **lora)
        for key, p in model.named_parameters():
            if key.endswith("lora_B"):
                torch.nn.init.normal_(p, std=0.05)  # B = 0 at init would merge to a no-op
        meta["lora"] = lora
    checkpoint.save(root / name, step=5, model=model, state={}, meta=meta, keep_last=1)
    return root / name, model.eval()


def logits(model, idx):
    with torch.no_grad():
        return model(idx)


def test_hf_export_of_a_lora_run_loads_in_transformers_with_same_logits(tmp_path):
    from transformers import GPT2LMHeadModel

    lora = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["c_attn", "c_fc"]}
    run, adapted = save_run(tmp_path, "lora", lora=lora)
    out = export(run, fmt="hf", out=tmp_path / "hf")
    ref = GPT2LMHeadModel.from_pretrained(out).eval()
    idx = torch.randint(0, 257, (2, 20))
    with torch.no_grad():
        theirs = ref(idx).logits
    torch.testing.assert_close(theirs, logits(adapted, idx), atol=1e-4, rtol=0)
    provenance = json.loads((out / "gptkit.json").read_text())
    assert provenance["tokenizer"]["kind"] == "byte" and provenance["step"] == 5
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "lora"]  # no temp dir left


def test_hf_export_refuses_a_classifier_but_safetensors_keeps_its_head(tmp_path):
    head = {"name": "classification", "num_labels": 3, "labels": ["a", "b", "c"], "pooling": "last"}
    run, model = save_run(tmp_path, "cls", head=head)
    with pytest.raises(GptkitError, match="classification head.*--format safetensors"):
        export(run, fmt="hf", out=tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    out = export(run, fmt="safetensors", out=tmp_path / "st")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["head"] == head and config["tokenizer"]["kind"] == "byte"
    rebuilt = GPT(GPTConfig(**config["model"]), head=build_head(config["head"], CFG))
    rebuilt.load_state_dict(artifacts.read_weights(out / "model.safetensors"), strict=True)
    idx = torch.randint(0, 257, (2, 12))
    assert torch.equal(logits(rebuilt.eval(), idx), logits(model, idx))


def test_existing_output_is_never_overwritten(tmp_path, capsys):
    run, _ = save_run(tmp_path, "run")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["export", str(run), "--out", str(taken)]) == 2
    assert "not empty" in capsys.readouterr().err and (taken / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(run), "--format", "safetensors", "--out", str(empty)]) == 0
    assert (empty / "model.safetensors").is_file()
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x/y")]) == 2
    assert not (tmp_path / "x").exists()  # a failed export creates nothing


def test_exported_dirs_load_back_with_their_own_tokenizer(tmp_path):
    run, model = save_run(tmp_path, "lm")
    idx = torch.randint(0, 257, (1, 16))
    for fmt in ("hf", "safetensors"):
        out = export(run, fmt=fmt, out=tmp_path / fmt)
        again = artifacts.load_model(out)
        torch.testing.assert_close(logits(again, idx), logits(model, idx), atol=1e-5, rtol=0)
        assert artifacts.resolve(out).tokenizer().spec() == get_tokenizer("byte").spec(), fmt

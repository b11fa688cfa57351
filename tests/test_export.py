"""`gptkit export`: HF GPT-2 dirs that transformers loads with the same logits (LoRA merged) and
a tokenizer that gives the same ids (a chat model's tokens and template too), bare safetensors +
config.json that rebuild the model, and refusals that never overwrite."""

import dataclasses
import json

import pytest
import torch

from gptkit import artifacts
from gptkit.cli import main
from gptkit.commands.export import export
from gptkit.config import Config, to_dict
from gptkit.data import chat
from gptkit.data.hf_tokenizer import train_bpe
from gptkit.data.tokenizer import ByteTokenizer, CharTokenizer, get_tokenizer
from gptkit.errors import GptkitError
from gptkit.model.gpt import GPT, GPTConfig
from gptkit.model.heads import build_head
from gptkit.model.lora import inject
from gptkit.train import checkpoint

CFG = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=257)
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "I am Tavo."},
    {"role": "assistant", "content": "Hi Tavo."},
    {"role": "user", "content": "my name?"},
]
TEXT = "".join(f"{m['role']}\n{m['content']}\n" for m in MESSAGES)
# ChatML without the newline between turns: a model's own template, carried as it is
OWN_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _own_template(folder):
    """An HF tokenizer dir with the ChatML tokens and its own chat template."""
    import tokenizers

    tok = tokenizers.Tokenizer.from_str(train_bpe([TEXT] * 20, 300).spec()["json"])
    tok.add_special_tokens([chat.IM_START, chat.IM_END])
    tok.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "<|endoftext|>", "chat_template": OWN_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return get_tokenizer(str(folder))


# the tokenizer kinds a chat run can have (a function of a scratch folder)
BASES = {
    "byte": lambda _: ByteTokenizer(),
    "char": lambda _: CharTokenizer("".join(sorted(set(TEXT)))),
    "gpt2": lambda _: get_tokenizer("gpt2"),
    "bpe": lambda _: train_bpe([TEXT] * 20, 300),
    "own-template": _own_template,
}


def save_run(root, name, *, head=None, lora=None, tokenizer=None):
    """A checkpointed run with random weights (and random LoRA adapters when `lora`): CFG in
    byte tokens, or a 128-token context for the tokenizer `tokenizer` (a spec)."""
    cfg = CFG
    if tokenizer is not None:
        cfg = dataclasses.replace(CFG, vocab_size=tokenizer["vocab_size"], block_size=128)
    head, tokenizer = head or {"name": "lm"}, tokenizer or get_tokenizer("byte").spec()
    torch.manual_seed(0)
    model = GPT(cfg, head=build_head(head, cfg))
    meta = {"config": to_dict(Config(model=cfg)), "tokenizer": tokenizer, "head": head}
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
    from transformers import AutoTokenizer, GPT2LMHeadModel

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
    tokenizer = AutoTokenizer.from_pretrained(out)  # byte tokens: one id per UTF-8 byte
    assert tokenizer.encode("héllo") == list("héllo".encode()) and tokenizer.eos_token_id == 256
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())
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


@pytest.mark.parametrize("kind", BASES)
def test_hf_export_of_a_chat_run_tokenizes_and_templates_as_gptkit_does(kind, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    spec = chat.with_chat_tokens(BASES[kind](tmp_path).spec())  # ChatML tokens added if needed
    run, model = save_run(tmp_path, "chat", tokenizer=spec)
    out = export(run, fmt="hf", out=tmp_path / "hf")
    tok, theirs = get_tokenizer(spec), AutoTokenizer.from_pretrained(out)
    ids = chat.render_prompt(tok, MESSAGES)
    text = tok.decode(ids)  # "<|im_start|>system\nBe brief.<|im_end|>\n...<|im_start|>assistant\n"
    assert theirs.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == text
    assert theirs.encode(text) == ids and theirs.decode(ids) == text
    ends = [chat.specials(tok)[t] for t in (chat.IM_START, chat.IM_END)]
    assert theirs.convert_tokens_to_ids([chat.IM_START, chat.IM_END]) == ends
    assert GenerationConfig.from_pretrained(out).eos_token_id == chat.stop_ids(tok)
    hf_model = AutoModelForCausalLM.from_pretrained(out).eval()
    idx = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, logits(model, idx), atol=1e-4, rtol=0)
    (out / "gptkit.json").unlink()  # without gptkit's metadata: the exported files alone
    assert chat.render_prompt(artifacts.resolve(out).tokenizer(), MESSAGES) == ids


def test_a_tokenizer_that_would_encode_differently_is_refused(tmp_path, monkeypatch):
    from gptkit.commands import export as export_command

    spec = chat.with_chat_tokens(BASES["char"](tmp_path).spec())
    run, _ = save_run(tmp_path, "chat", tokenizer=spec)
    wrong = export_command.hf_tokenizer.from_chars
    monkeypatch.setattr(export_command.hf_tokenizer, "from_chars", lambda c: wrong(c[::-1]))
    with pytest.raises(GptkitError, match="cannot be written as a Hugging Face tokenizer.json"):
        export(run, fmt="hf", out=tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat"]  # nothing written

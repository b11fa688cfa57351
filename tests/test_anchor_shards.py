"""The anchors' data as it is, with no meta.json: llm.c / modded-nanogpt shards (GPT-2 ids, 256-int32
header) and nanoGPT's headerless train.bin/val.bin. The meta comes from the files; a meta.pkl is
never opened."""

import math
import pickle

import numpy as np
import pytest
from conftest import TINY

from gptkit.commands.evaluate import evaluate
from gptkit.commands.pretrain import pretrain, read_data_meta
from gptkit.config import load_config
from gptkit.data.shards import GPT2_SPEC, header, read_meta, read_shard
from gptkit.data.tokenizer import ByteTokenizer, get_tokenizer
from gptkit.errors import GptkitError

RUN = [*TINY, "train.max_steps=3", "train.warmup_steps=0", "train.eval_interval=3"]


def config(data_dir, run_dir, *extra):
    return load_config(None, [*RUN, f"data.dir={data_dir}", f"train.out_dir={run_dir}", *extra])


@pytest.fixture(scope="module")
def gpt2_ids(tiny_data) -> np.ndarray:
    """GPT-2 ids of the builtin tiny corpus (read back from its byte shards)."""
    text = ByteTokenizer().decode(read_shard(tiny_data / "train_000000.bin")[:60_000])
    return np.array(get_tokenizer("gpt2").encode(text), dtype=np.uint32)


def write_llmc(path, ids, dtype=np.uint16):
    """One llm.c shard: the 256-int32 header, then the ids."""
    path.write_bytes(header(len(ids), dtype) + np.asarray(ids, dtype=dtype).tobytes())


def _trap(marker) -> bytes:
    """A pickle that creates `marker` when it is loaded."""

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps(Trap())


@pytest.fixture
def nanogpt_dir(tmp_path, gpt2_ids):
    """nanoGPT's layout: headerless uint16 train.bin / val.bin, and a meta.pkl that must never be
    unpickled (it would create `tmp_path / "pwned"`)."""
    data = tmp_path / "nanogpt"
    data.mkdir()
    cut = len(gpt2_ids) * 9 // 10
    (data / "train.bin").write_bytes(gpt2_ids[:cut].astype(np.uint16).tobytes())
    (data / "val.bin").write_bytes(gpt2_ids[cut:].astype(np.uint16).tobytes())
    (data / "meta.pkl").write_bytes(_trap(tmp_path / "pwned"))
    return data


def test_llmc_shards_train_and_eval_without_meta_json(tmp_path, gpt2_ids, capsys):
    data = tmp_path / "fineweb10B"
    data.mkdir()
    cut = len(gpt2_ids) * 9 // 10
    write_llmc(data / "fineweb_train_000001.bin", gpt2_ids[: cut // 2])
    write_llmc(data / "fineweb_train_000002.bin", gpt2_ids[cut // 2 : cut])
    write_llmc(data / "fineweb_val_000000.bin", gpt2_ids[cut:])
    meta = read_meta(data)
    assert meta["tokenizer"] == GPT2_SPEC == get_tokenizer("gpt2").spec()
    assert [s["file"] for s in meta["splits"]["train"]["shards"]] == [
        "fineweb_train_000001.bin", "fineweb_train_000002.bin"]  # fmt: skip
    assert meta["splits"]["train"]["tokens"] == cut  # counts from the headers
    assert meta["splits"]["val"]["tokens"] == len(gpt2_ids) - cut
    run = tmp_path / "run"
    last = pretrain(config(data, run))
    assert "data: llm.c v1 files in" in capsys.readouterr().out
    assert last["val_loss"] < 11.0  # ln(50257) = 10.8 at init; it trained, on GPT-2 ids
    scores = evaluate(run, data=str(data), max_batches=2, batch_size=2, device="cpu")
    assert scores["tokens"] == 2 * 2 * 32 and math.isfinite(scores["loss"])
    # without --data, a run is scored on the folder it trained on, meta.json or not
    assert evaluate(run, max_batches=2, batch_size=2, device="cpu")["loss"] == scores["loss"]


def test_uint32_shards_need_data_tokenizer(tmp_path, gpt2_ids):
    data = tmp_path / "u32"
    data.mkdir()
    write_llmc(data / "tiny_train.bin", gpt2_ids, np.uint32)  # llm.c's tinyshakespeare naming
    with pytest.raises(GptkitError, match="uint32 llm.c v7 shards .* set data.tokenizer"):
        pretrain(config(data, tmp_path / "run"))
    pretrain(config(data, tmp_path / "run", "data.tokenizer=gpt2"))  # no val split: no val loss
    assert read_meta(data, GPT2_SPEC)["splits"]["val"] == {"shards": [], "tokens": 0}


def test_nanogpt_bins_need_a_tokenizer_and_meta_pkl_is_never_loaded(tmp_path, nanogpt_dir):
    probe = tmp_path / "probe"
    pickle.loads(_trap(probe))  # the trap works: loading it creates its marker
    assert probe.exists()
    with pytest.raises(GptkitError) as e:
        pretrain(config(nanogpt_dir, tmp_path / "run"))
    msg = str(e.value)
    assert "headerless train.bin/val.bin" in msg and str(nanogpt_dir / "meta.pkl") in msg
    assert "gptkit never loads" in msg and "data.tokenizer" in msg and "gptkit prepare" in msg
    last = pretrain(config(nanogpt_dir, tmp_path / "run", "data.tokenizer=gpt2"))
    assert last["val_loss"] < 11.0
    # eval finds the run's data and takes the tokenizer from the model (never from meta.pkl)
    scores = evaluate(tmp_path / "run", max_batches=2, batch_size=2, device="cpu")
    assert math.isfinite(scores["loss"])
    size = (nanogpt_dir / "train.bin").stat().st_size
    assert read_data_meta(config(nanogpt_dir, tmp_path / "r", "data.tokenizer=gpt2"))["splits"][
        "train"]["tokens"] == size // 2  # fmt: skip
    assert not (tmp_path / "pwned").exists(), "meta.pkl was unpickled"


def test_data_tokenizer_must_agree_with_meta_json(tiny_data, tmp_path):
    assert read_data_meta(config(tiny_data, tmp_path, "data.tokenizer=byte"))["tokenizer"] == (
        ByteTokenizer().spec()
    )
    with pytest.raises(GptkitError, match="data.tokenizer=gpt2 but .*meta.json says .* byte"):
        read_data_meta(config(tiny_data, tmp_path, "data.tokenizer=gpt2"))


def test_folder_without_shards_or_meta_says_what_it_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(GptkitError, match="fineweb_train_000001.bin.*gptkit prepare"):
        read_meta(tmp_path)
    with pytest.raises(GptkitError, match="data.tokenizer=chars: unknown tokenizer"):
        read_data_meta(config(tmp_path, tmp_path, "data.tokenizer=chars"))

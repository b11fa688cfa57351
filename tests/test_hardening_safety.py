"""Untrusted files never run code: pickles in state.pt / pytorch_model.bin, YAML python tags.

Each payload would create a marker file when unpickled (via os.system or open); a first test
proves the payloads are live by loading them unsafely. Every gptkit command that reads such a file
must refuse it with exit 2 (or never read it) and the marker must never appear. A benign
pytorch_model.bin still loads (torch's weights_only loader), and a scan of gptkit's source keeps
unsafe deserializers out.
"""

import ast
import builtins
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_RUN

from gptkit import artifacts, cli
from gptkit.config import load_config
from gptkit.model import hf
from gptkit.model.gpt import GPT, GPTConfig

ROOT = Path(__file__).parents[1]
KINDS = ("os.system", "open")


class _Payload:
    """Pickles to the call `func(*args)`: what a malicious file runs when it is unpickled."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payload(kind: str, marker: Path) -> _Payload:
    if kind == "os.system":
        return _Payload(os.system, (f"touch {marker}",))
    return _Payload(builtins.open, (str(marker), "w"))


def _write_evil(path: Path, kind: str, marker: Path, *, as_state_dict=True):
    """A torch file whose unpickling runs the payload (inside a dict like a real state file)."""
    obj = {"optimizer": _payload(kind, marker)} if as_state_dict else _payload(kind, marker)
    torch.save(obj, path)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_data):
    """Byte data (a link to the shared, read-only one), gpt2 data, labelled rows, a tiny GPT-2
    HF dir. The 2-step run on the byte data is each test's own `tiny_run`."""
    from gptkit.commands.prepare import prepare

    root = tmp_path_factory.mktemp("safety")
    (root / "data").symlink_to(tiny_data, target_is_directory=True)
    (root / "text.txt").write_text("Some text for GPT-2 to score. " * 40)
    prepare(load_config(None, [f"prepare.source={root}/text.txt", "prepare.tokenizer=gpt2",
                               f"prepare.out_dir={root}/gpt2data", "prepare.val_fraction=0",
                               "prepare.workers=1"]))  # fmt: skip
    (root / "rows.jsonl").write_text("".join(f'{{"text": "t{i}", "label": {i % 2}}}\n'
                                             for i in range(16)))  # fmt: skip
    torch.manual_seed(0)
    gpt2 = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=50257))
    hf.save_hf(gpt2, root / "hf")  # config.json + model.safetensors
    return root


def _main(argv, capsys):
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("kind", KINDS)
def test_payloads_are_live_when_unpickled_or_yaml_loaded_unsafely(tmp_path, kind):
    marker = tmp_path / "ran"
    _write_evil(tmp_path / "state.pt", kind, marker)
    torch.load(tmp_path / "state.pt", weights_only=False)  # what gptkit must never do
    assert marker.exists()
    marker.unlink()
    yaml.unsafe_load(_yaml_attack(kind, marker))  # what gptkit must never do
    assert marker.exists()


@pytest.mark.parametrize("resume", ["auto", "path"])
@pytest.mark.parametrize("kind", KINDS)
def test_pretrain_resume_refuses_a_malicious_state_pt(ws, tiny_run, tmp_path, capsys, kind, resume):
    run, ckpt = tiny_run, artifacts.latest_checkpoint(tiny_run)
    marker = tmp_path / "ran"
    _write_evil(ckpt / "state.pt", kind, marker)
    how = "train.resume=auto" if resume == "auto" else f"train.resume={ckpt}"
    code, err = _main(["pretrain", *TINY_RUN, f"data.dir={ws / 'data'}", f"train.out_dir={run}",
                       "train.max_steps=3", how], capsys)  # fmt: skip
    assert code == 2 and err.startswith("gptkit: error: refusing to load") and "state.pt" in err
    assert not marker.exists()
    assert artifacts.latest_checkpoint(run) == ckpt  # nothing trained or written


def test_sample_eval_export_finetune_never_unpickle_state_pt(ws, tiny_run, tmp_path, capsys):
    run, ckpt = tiny_run, artifacts.latest_checkpoint(tiny_run)
    marker = tmp_path / "ran"
    _write_evil(ckpt / "state.pt", "os.system", marker)
    for argv in (
        ["sample", run, "--max-new-tokens", "2", "--device", "cpu"],
        ["eval", run, "--max-batches", "1", "--batch-size", "2", "--device", "cpu"],
        ["export", run, "--out", tmp_path / "exported"],
        ["finetune", f"finetune.init_from={run}", f"finetune.train_file={ws / 'rows.jsonl'}",
         f"train.out_dir={tmp_path / 'ft'}", "train.device=cpu", "train.dtype=float32",
         "train.max_steps=1", "train.warmup_steps=0", "train.batch_size=4",
         "train.eval_interval=0"],
    ):  # fmt: skip
        code, err = _main(argv, capsys)
        assert code == 0, (argv, err)
        assert not marker.exists(), argv


def _hf_argv(command: str, path: Path, ws: Path, tmp_path: Path) -> list:
    return {
        "sample": ["sample", path, "--max-new-tokens", "2"],
        "eval": ["eval", path, "--data", ws / ("gpt2data" if hf.is_hf_dir(path) else "data"),
                 "--split", "train", "--max-batches", "1"],
        "export": ["export", path, "--out", tmp_path / "exported"],
        "finetune": ["finetune", f"finetune.init_from={path}", f"train.out_dir={tmp_path}/ft",
                     f"finetune.train_file={ws / 'rows.jsonl'}", "train.device=cpu"],
        "pretrain-resume": ["pretrain", *TINY_RUN, f"data.dir={ws / 'data'}",
                            f"train.out_dir={tmp_path}/r", f"train.resume={path}"],
        "predict": ["predict", path, "--device", "cpu"],
    }[command]  # fmt: skip


@pytest.mark.parametrize("command", ["sample", "eval", "export", "finetune"])
@pytest.mark.parametrize("kind", KINDS)
def test_hf_dir_with_a_malicious_pytorch_model_bin_is_refused(ws, tmp_path, capsys, command, kind):
    folder, marker = tmp_path / "hf", tmp_path / "ran"
    folder.mkdir()
    shutil.copy(ws / "hf" / "config.json", folder)  # and no model.safetensors
    _write_evil(folder / "pytorch_model.bin", kind, marker, as_state_dict=False)
    code, err = _main(_hf_argv(command, folder, ws, tmp_path), capsys)
    assert code == 2 and not marker.exists()
    assert err.startswith("gptkit: error: refusing to load") and "pytorch_model.bin" in err


def test_benign_pytorch_model_bin_loads_like_safetensors(ws, tmp_path, capsys):
    from safetensors.torch import load_file

    folder = tmp_path / "hf_bin"
    folder.mkdir()
    shutil.copy(ws / "hf" / "config.json", folder)
    torch.save(load_file(ws / "hf" / "model.safetensors"), folder / "pytorch_model.bin")
    a, b = hf.load_hf(ws / "hf").state_dict(), hf.load_hf(folder).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    outputs = []
    for path in (ws / "hf", folder):
        capsys.readouterr()
        assert cli.main(["sample", str(path), "--prompt", "Hi", "--max-new-tokens", "3",
                         "--temperature", "0", "--device", "cpu"]) == 0  # fmt: skip
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("Hi")


@pytest.mark.parametrize("command", ["sample", "eval", "export", "finetune", "pretrain-resume",
                                     "predict"])  # fmt: skip
def test_run_whose_weights_file_is_a_pickle_is_refused(ws, tiny_run, tmp_path, capsys, command):
    run, ckpt = tiny_run, artifacts.latest_checkpoint(tiny_run)
    marker = tmp_path / "ran"
    _write_evil(ckpt / "model.safetensors", "os.system", marker)  # a pickle under the name
    if command == "predict":  # predict checks the head first: make it a classifier's checkpoint
        meta = json.loads((ckpt / "meta.json").read_text())
        meta["head"] = {"name": "classification", "num_labels": 2, "labels": ["a", "b"],
                        "pooling": "last"}  # fmt: skip
        (ckpt / "meta.json").write_text(json.dumps(meta))
    code, err = _main(_hf_argv(command, run, ws, tmp_path), capsys)
    assert code == 2 and not marker.exists()
    assert err.startswith("gptkit: error: ") and "not a readable safetensors file" in err


def _yaml_attack(kind: str, marker: Path) -> str:
    if kind == "os.system":
        return f"train:\n  lr: !!python/object/apply:os.system ['touch {marker}']\n"
    return f"train: !!python/object/apply:builtins.open ['{marker}', 'w']\n"


@pytest.mark.parametrize("command", ["prepare", "pretrain", "finetune"])
@pytest.mark.parametrize("kind", KINDS)
def test_config_yaml_python_tags_cannot_run_code(tmp_path, capsys, command, kind):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(_yaml_attack(kind, marker))
    code, err = _main([command, "-c", path], capsys)
    assert code == 2 and not marker.exists()
    assert err.startswith(f"gptkit: error: {path} at line") and "is not valid YAML" in err
    # an override is parsed with safe_load too: the tag stays text and runs nothing
    code, _ = _main([command, f"prepare.text_field=!!python/object/apply:os.system "
                              f"['touch {marker}']", "--print-config"], capsys)  # fmt: skip
    assert code == 0 and not marker.exists()


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = ast.unparse(func)
            kwargs = {k.arg: ast.unparse(k.value) for k in node.keywords}
            yield name, kwargs, node.lineno


def test_no_unsafe_deserializer_in_gptkit_source():
    """torch.load only with weights_only=True; no pickle/marshal/unsafe yaml/eval/exec."""
    problems = []
    for path in sorted((ROOT / "gptkit").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name, kwargs, line in _calls(tree):
            where = f"{path.relative_to(ROOT)}:{line} {name}"
            if name.endswith("torch.load") and kwargs.get("weights_only") != "True":
                problems.append(where)
            if name.split(".")[-1] in ("load", "loads") and name.split(".")[0] in (
                "pickle",
                "marshal",
                "dill",
                "cloudpickle",
                "joblib",
            ):
                problems.append(where)
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "eval", "exec"):
                problems.append(where)
            if name.endswith("np.load") and kwargs.get("allow_pickle") == "True":
                problems.append(where)
    assert not problems, problems

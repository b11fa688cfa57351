"""Bad-input battery: every subcommand turns bad paths, configs, flags and files into exit 2.

One table drives `gptkit.cli.main` in-process (fast); a few real `python -m gptkit` runs prove
that no traceback reaches a terminal. Each case must exit 2 with exactly one stderr line, starting
"gptkit: error:" and naming the problem, within a deadline (never a hang, never a traceback).
"""

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import TINY_RUN

from gptkit import artifacts, cli
from gptkit.config import load_config, to_dict
from gptkit.data.shards import header
from gptkit.data.tokenizer import ByteTokenizer
from gptkit.model.gpt import GPT
from gptkit.model.heads import build_head
from gptkit.train import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_data, shared_tiny_run):
    """Byte-tokenized builtin:tiny data and a 2-step TINY_RUN on it (links to the shared,
    read-only ones: a case that breaks them works on a copy), char-tokenized data, a classifier."""
    from gptkit.commands.prepare import prepare

    root = tmp_path_factory.mktemp("bad")
    (root / "data").symlink_to(tiny_data, target_is_directory=True)
    (root / "run").symlink_to(shared_tiny_run, target_is_directory=True)
    prep = ["prepare.val_fraction=0.1", "prepare.workers=1"]
    (root / "text.txt").write_text("hello world, " * 400 + "\n\n" + "bye now. " * 300)
    prepare(load_config(None, [f"prepare.source={root}/text.txt", "prepare.tokenizer=char",
                               f"prepare.out_dir={root}/chardata", *prep]))  # fmt: skip
    (root / "rows.jsonl").write_text('{"text": "a b", "label": "x"}\n' * 8)
    _classifier_run(root / "cls")
    return root


def _classifier_run(run):
    """A fine-tuned (classification head) checkpoint whose model section equals TINY_RUN's."""
    cfg = load_config(None, TINY_RUN)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=257))
    head = {"name": "classification", "num_labels": 2, "labels": ["a", "b"], "pooling": "last"}
    meta = {"config": to_dict(cfg), "tokenizer": ByteTokenizer().spec(), "head": head}
    model = GPT(cfg.model, head=build_head(head, cfg.model))
    checkpoint.save(run, step=2, model=model, state={}, meta=meta, keep_last=1)


# --- helpers that build one broken input each (in the case's own tmp folder) -------------------


def _file(tmp, name, content):
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _run_copy(ws, tmp):
    shutil.copytree(ws / "run", tmp / "run")
    return tmp / "run"


def _ckpt_file(ws, tmp, name):
    """(run copy, path of `name` inside its latest checkpoint)."""
    run = _run_copy(ws, tmp)
    return run, artifacts.latest_checkpoint(run) / name


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _data_copy(ws, tmp, mutate=None):
    shutil.copytree(ws / "data", tmp / "data")
    if mutate:
        mutate(tmp / "data")
    return tmp / "data"


def _poke(path, offset, raw: bytes):
    """Overwrite bytes in place (the size stays, so only content checks can catch it)."""
    data = bytearray(path.read_bytes())
    data[offset : offset + len(raw)] = raw
    path.write_bytes(bytes(data))


def _truncate(path, keep=0.5):
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _pretrain(ws, tmp, *extra, data=None):
    data = data or ws / "data"
    return ["pretrain", *TINY_RUN, f"data.dir={data}", f"train.out_dir={tmp}/r", *extra]


def _prepare(tmp, *extra):
    return ["prepare", "prepare.tokenizer=byte", f"prepare.out_dir={tmp}/out", *extra]


def _hf_dir(tmp, **change):
    """A tiny random Llama dir saved by transformers, its config.json then changed."""
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=1, num_attention_heads=2)  # fmt: skip
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp / "hf")
    _edit_json(tmp / "hf" / "config.json", lambda d: d.update(change))
    return str(tmp / "hf")


def _modern_ckpt(ws, tmp):
    """The shared run's checkpoint, rebuilt as a `modern` family model."""
    cfg = load_config(None, [*TINY_RUN, "model.family=modern", "model.vocab_size=257"])
    meta = {"config": to_dict(cfg), "tokenizer": ByteTokenizer().spec(), "head": {"name": "lm"}}
    return str(checkpoint.save(tmp / "m", step=1, model=GPT(cfg.model), state={}, meta=meta,
                               keep_last=1))  # fmt: skip


_GEN_ROW = '{"prompt": "a", "reference": "b"}\n'
_CHOICE_ROW = '{"context": "a", "choices": ["b", "c"], "label": 2}\n'
ROWS2 = '{"text": "a b", "label": "x"}\n{"text": "c d", "label": "y"}\n' * 4  # two classes


def _nanogpt_dir(tmp):
    """nanoGPT's headerless train.bin/val.bin and a meta.pkl (never opened: it is not a pickle)."""
    (tmp / "ng").mkdir()
    for name in ("train.bin", "val.bin"):
        np.arange(500, dtype=np.uint16).tofile(tmp / "ng" / name)
    (tmp / "ng" / "meta.pkl").write_bytes(b"unpickling this would fail")
    return tmp / "ng"


def _u32_dir(tmp):
    """An llm.c uint32 (version 7) shard folder without meta.json."""
    (tmp / "u32").mkdir()
    ids = np.arange(500, dtype=np.uint32)
    (tmp / "u32" / "fineweb_train_000000.bin").write_bytes(header(500, np.uint32) + ids.tobytes())
    return tmp / "u32"


def _trunc_weights(ws, tmp):
    run, f = _ckpt_file(ws, tmp, "model.safetensors")
    _truncate(f)
    return run


def _meta_edit(ws, tmp, edit):
    run, f = _ckpt_file(ws, tmp, "meta.json")
    _edit_json(f, edit)
    return run


def _wider(meta):  # meta.json says n_embd 64, the weights are 32 wide
    meta["config"]["model"]["n_embd"] = 64


def _gpt2_tok(meta):  # a 50257-token tokenizer for a 257-row embedding
    meta["tokenizer"] = {"kind": "tiktoken", "name": "gpt2", "vocab_size": 50257, "eot_id": 50256}


def _garbage_state(ws, tmp):
    run, f = _ckpt_file(ws, tmp, "state.pt")
    f.write_bytes(b"not a torch file")
    return run


def _metrics_corrupt(ws, tmp):
    run = _run_copy(ws, tmp)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    return run


# (id, argv builder (ws, tmp) -> argv, fragment the one error line must contain)
def _chat_ft(ws, tmp, *bad: dict):
    """finetune on messages rows: a user turn, then `bad` (every row, so train and val)."""
    row = {"messages": [{"role": "user", "content": "hi"}, *bad]}
    rows = _file(tmp, "chat.jsonl", (json.dumps(row) + "\n") * 4)
    return ["finetune", f"finetune.init_from={ws / 'run'}", "finetune.head=lm",
            f"finetune.train_file={rows}", f"train.out_dir={tmp}/ft", "train.device=cpu"]  # fmt: skip


ASSISTANT = {"role": "assistant", "content": "yo"}
CASES = [
    # prepare
    ("prepare-missing-config", lambda ws, t: ["prepare", "-c", f"{t}/nope.yaml"], "not found"),
    ("prepare-yaml-syntax", lambda ws, t: ["prepare", "-c", _file(t, "a.yaml", "prepare: [\n")],
     "is not valid YAML"),
    ("prepare-unknown-key", lambda ws, t: _prepare(t, "prepare.sorce=x"),
     "did you mean 'prepare.source'"),
    ("prepare-wrong-type", lambda ws, t: _prepare(t, "prepare.workers=two"), "expected an integer"),
    ("prepare-out-of-range", lambda ws, t: _prepare(t, "prepare.val_fraction=1.5"),
     "val_fraction"),
    ("prepare-missing-source", lambda ws, t: _prepare(t, f"prepare.source={t}/none"),
     "does not exist"),
    ("prepare-empty-dataset", lambda ws, t: _prepare(t, f"prepare.source={_file(t, 'e.txt', '')}"),
     "no documents"),
    ("prepare-unknown-tokenizer", lambda ws, t: [*_prepare(t), "prepare.tokenizer=gpt5"],
     "unknown tokenizer 'gpt5'"),
    ("prepare-out-dir-is-file", lambda ws, t: [*_prepare(t, "prepare.source=builtin:tiny"),
                                               f"prepare.out_dir={_file(t, 'f', 'x')}"],
     "is a file"),
    ("prepare-output-exists", lambda ws, t: [*_prepare(t, "prepare.source=builtin:tiny"),
                                             f"prepare.out_dir={ws / 'data'}"], "--force"),
    ("prepare-corrupt-parquet",
     lambda ws, t: _prepare(t, f"prepare.source={_file(t, 'x.parquet', 'PAR1 nope')}"),
     "not a readable parquet"),
    ("prepare-jsonl-missing-field",
     lambda ws, t: _prepare(t, "prepare.source=" + _file(t, "x.jsonl", '{"body": 1}')),
     "has no field 'text'"),
    ("prepare-negative-max-documents", lambda ws, t: _prepare(t, "prepare.max_documents=-1"),
     "max_documents"),
    ("prepare-bad-flag", lambda ws, t: ["prepare", "--forse"], "unrecognized arguments"),
    ("prepare-missing-tokenizer-json",
     lambda ws, t: _prepare(t, f"prepare.tokenizer={t}/nope/tokenizer.json"), "does not exist"),
    ("prepare-corrupt-tokenizer-json",
     lambda ws, t: _prepare(t, "prepare.tokenizer=" + _file(t, "tokenizer.json", '{"model": 3')),
     "not a valid tokenizer.json"),
    ("prepare-bpe-too-small", lambda ws, t: _prepare(t, "prepare.tokenizer=bpe:100"),
     "N must be >= 257"),
    # pretrain
    ("pretrain-no-data", lambda ws, t: _pretrain(ws, t, data=t / "nodata"), "gptkit prepare"),
    ("pretrain-nan-lr", lambda ws, t: _pretrain(ws, t, "train.lr=nan"), "finite number"),
    ("pretrain-warmup-too-long", lambda ws, t: _pretrain(ws, t, "train.warmup_steps=9"),
     "warmup_steps"),
    ("pretrain-heads-do-not-divide", lambda ws, t: _pretrain(ws, t, "model.n_embd=33"),
     "divisible"),
    ("pretrain-block-size-beyond-data", lambda ws, t: _pretrain(ws, t, "model.block_size=999999"),
     "model.block_size"),
    ("pretrain-vocab-too-small", lambda ws, t: _pretrain(ws, t, "model.vocab_size=100"),
     "vocab_size 100"),
    ("pretrain-not-key-value", lambda ws, t: _pretrain(ws, t, "train.lr"), "section.key=value"),
    ("pretrain-section-is-scalar", lambda ws, t: _pretrain(ws, t, "train=3"),
     "`train` must be a mapping"),
    ("pretrain-wrong-literal", lambda ws, t: _pretrain(ws, t, "train.schedule=cosinus"),
     "must be one of cosine"),
    ("pretrain-fp16-on-cpu", lambda ws, t: _pretrain(ws, t, "train.dtype=float16"), "float16"),
    ("pretrain-no-cuda", lambda ws, t: _pretrain(ws, t, "train.device=cuda:3"),
     "CUDA is not available"),
    ("pretrain-truncated-shard",
     lambda ws, t: _pretrain(ws, t, data=_data_copy(ws, t, lambda d: _truncate(
         d / "train_000000.bin"))), "missing or not"),
    ("pretrain-shard-bad-magic",
     lambda ws, t: _pretrain(ws, t, data=_data_copy(ws, t, lambda d: _poke(
         d / "train_000000.bin", 0, b"\0\0\0\0"))), "not a token shard"),
    ("pretrain-shard-id-out-of-vocab",
     lambda ws, t: _pretrain(ws, t, "data.sampling=sequential", data=_data_copy(
         ws, t, lambda d: _poke(d / "train_000000.bin", 1024, b"\xff" * 64))),
     "outside the vocabulary of 257"),
    ("pretrain-meta-without-tokenizer",
     lambda ws, t: _pretrain(ws, t, data=_data_copy(ws, t, lambda d: _edit_json(
         d / "meta.json", lambda m: m.pop("tokenizer")))), "no tokenizer"),
    ("pretrain-empty-train-split",
     lambda ws, t: _pretrain(ws, t, data=_data_copy(ws, t, lambda d: _edit_json(
         d / "meta.json", lambda m: m["splits"]["train"].update(shards=[], tokens=0)))),
     "0 train tokens"),
    ("pretrain-resume-other-architecture",
     lambda ws, t: _pretrain(ws, t, "model.n_layer=3", f"train.resume={ws / 'run'}"),
     "model config differs"),
    ("pretrain-resume-other-tokenizer",
     lambda ws, t: _pretrain(ws, t, "model.block_size=8", f"train.resume={ws / 'run'}",
                             data=ws / "chardata"), "tokenizer"),
    ("pretrain-resume-finetuned-run",
     lambda ws, t: _pretrain(ws, t, f"train.resume={ws / 'cls'}"), "not hold a plain language"),
    ("pretrain-resume-garbage-state",
     lambda ws, t: _pretrain(ws, t, f"train.resume={_garbage_state(ws, t)}"), "state.pt"),
    ("pretrain-nanogpt-bins-with-meta-pkl", lambda ws, t: _pretrain(ws, t, data=_nanogpt_dir(t)),
     "is a pickle, which gptkit never loads"),
    ("pretrain-llmc-uint32-no-tokenizer", lambda ws, t: _pretrain(ws, t, data=_u32_dir(t)),
     "set data.tokenizer"),
    ("pretrain-data-tokenizer-disagrees", lambda ws, t: _pretrain(ws, t, "data.tokenizer=gpt2"),
     "data.tokenizer=gpt2 but"),
    ("pretrain-unknown-optimizer", lambda ws, t: _pretrain(ws, t, "train.optimizer=sgd"),
     "must be one of adamw"),
    ("pretrain-adam-lr-without-muon", lambda ws, t: _pretrain(ws, t, "train.adam_lr=1e-3"),
     "`train.adam_lr` must be > 0 and needs `train.optimizer: muon`"),
    ("pretrain-muon-zero-adam-lr",
     lambda ws, t: _pretrain(ws, t, "train.optimizer=muon", "train.adam_lr=0"),
     "`train.adam_lr` must be > 0 and needs"),
    ("pretrain-muon-momentum-too-big", lambda ws, t: _pretrain(ws, t, "train.muon_momentum=1.5"),
     "need 0 <= `train.muon_momentum_start` <= `train.muon_momentum` < 1"),
    ("pretrain-out-dir-is-file",
     lambda ws, t: [*_pretrain(ws, t), f"train.out_dir={_file(t, 'f', 'x')}"],
     "cannot write the run dir"),
    ("pretrain-global-batch-not-divisible",
     lambda ws, t: _pretrain(ws, t, "train.batch_size=4", "train.global_batch_size=6"),
     "train.global_batch_size=6 is not divisible by train.batch_size x ranks = 4 x 1 = 4"),
    ("pretrain-global-batch-and-grad-accum",
     lambda ws, t: _pretrain(ws, t, "train.global_batch_size=8", "train.grad_accum=2"),
     "Can't set both `train.global_batch_size` and `train.grad_accum`"),
    ("pretrain-resume-other-global-batch",
     lambda ws, t: _pretrain(ws, t, "train.grad_accum=2", f"train.resume={ws / 'run'}"),
     "set train.global_batch_size=4"),
    # sample
    ("sample-missing-path", lambda ws, t: ["sample", f"{t}/nope"], "does not exist"),
    ("sample-hf-dir-of-another-architecture",
     lambda ws, t: ["sample", _hf_dir(t, model_type="falcon")], "'falcon' model"),
    ("finetune-hf-dir-with-rope-scaling",
     lambda ws, t: ["finetune", f"finetune.init_from={_hf_dir(t, rope_scaling={'rope_type': 'yarn', 'factor': 4.0})}",
                    f"finetune.train_file={ws / 'rows.jsonl'}", f"train.out_dir={t}/ft"],
     "rope_scaling"),
    ("export-modern-run-as-hf",
     lambda ws, t: ["export", _modern_ckpt(ws, t), "--format", "hf", "--out", f"{t}/o"],
     "no Hugging Face equivalent"),
    ("sample-empty-dir", lambda ws, t: ["sample", str(t)], "no checkpoint in"),
    ("sample-truncated-safetensors", lambda ws, t: ["sample", str(_trunc_weights(ws, t))],
     "not a readable safetensors"),
    ("sample-other-architecture", lambda ws, t: ["sample", str(_meta_edit(ws, t, _wider))],
     "does not match its meta.json"),
    ("sample-vocab-mismatch", lambda ws, t: ["sample", str(_meta_edit(ws, t, _gpt2_tok))],
     "has 50257 ids but the model only 257"),
    ("sample-corrupt-meta", lambda ws, t: ["sample", str(_meta_edit(
        ws, t, lambda m: m["config"].pop("model")))], "invalid model config"),
    ("sample-top-p-out-of-range", lambda ws, t: ["sample", str(ws / "run"), "--top-p", "2"],
     "--top-p"),
    ("sample-not-an-int", lambda ws, t: ["sample", str(ws / "run"), "--top-k", "many"],
     "invalid int value"),
    ("sample-missing-prompt-file",
     lambda ws, t: ["sample", str(ws / "run"), "--prompt-file", f"{t}/p.txt"], "--prompt-file"),
    # eval
    ("eval-vocab-mismatch",
     lambda ws, t: ["eval", str(ws / "run"), "--data", str(ws / "chardata"), "--device", "cpu"],
     "vocab mismatch"),
    ("eval-zero-batches", lambda ws, t: ["eval", str(ws / "run"), "--max-batches", "0"], ">= 1"),
    ("eval-truncated-safetensors", lambda ws, t: ["eval", str(_trunc_weights(ws, t))],
     "not a readable safetensors"),
    ("eval-generate-missing-file",
     lambda ws, t: ["eval", str(ws / "run"), "--generate", f"{t}/none.jsonl"], "does not exist"),
    ("eval-generate-row-without-reference",
     lambda ws, t: ["eval", str(ws / "run"), "--generate", _file(t, "g.jsonl", '{"prompt": "a"}')],
     "has no 'reference'"),
    ("eval-generate-unknown-metric",
     lambda ws, t: ["eval", str(ws / "run"), "--generate", _file(t, "g.jsonl", _GEN_ROW),
                    "--metrics", "bleu,rogue1"], "unknown metric 'rogue1'"),
    ("eval-choices-label-out-of-range",
     lambda ws, t: ["eval", str(ws / "run"), "--choices", _file(t, "c.jsonl", _CHOICE_ROW)],
     "label 2 is out of range for 2 choices"),
    ("eval-tasks-unknown-name",
     lambda ws, t: ["eval", str(ws / "run"), "--tasks", "hellaswagg", "--task-dir", str(t)],
     "unknown lm-eval task 'hellaswagg'"),
    # export
    ("export-out-not-empty",
     lambda ws, t: ["export", str(ws / "run"), "--out", str(ws / "run")], "not empty"),
    ("export-missing-run", lambda ws, t: ["export", f"{t}/none", "--out", f"{t}/x"],
     "does not exist"),
    ("export-missing-out-flag", lambda ws, t: ["export", str(ws / "run")],
     "required: --out"),
    # finetune
    ("finetune-missing-backbone",
     lambda ws, t: ["finetune", f"finetune.init_from={t}/none", f"train.out_dir={t}/ft"],
     "does not exist"),
    ("finetune-head-typo",
     lambda ws, t: ["finetune", "finetune.head=clasification", f"train.out_dir={t}/ft"],
     "did you mean 'classification'"),
    ("finetune-no-train-file",
     lambda ws, t: ["finetune", f"finetune.init_from={ws / 'run'}", f"train.out_dir={t}/ft",
                    "train.device=cpu"], "train_file"),
    ("finetune-other-architecture",
     lambda ws, t: ["finetune", f"finetune.init_from={_meta_edit(ws, t, _wider)}",
                    f"finetune.train_file={ws / 'rows.jsonl'}", f"train.out_dir={t}/ft"],
     "does not match its meta.json"),
    ("finetune-muon-frozen-backbone",
     lambda ws, t: ["finetune", f"finetune.init_from={ws / 'run'}", "finetune.freeze=backbone",
                    f"finetune.train_file={_file(t, 'r.jsonl', ROWS2)}", f"train.out_dir={t}/ft",
                    "train.device=cpu", "train.optimizer=muon"], "needs trainable 2-D"),
    ("finetune-global-batch-not-divisible",
     lambda ws, t: ["finetune", f"finetune.init_from={ws / 'run'}", "train.device=cpu",
                    f"finetune.train_file={ws / 'rows.jsonl'}", f"train.out_dir={t}/ft",
                    "train.batch_size=4", "train.global_batch_size=10"], "multiple of 4"),
    ("finetune-chat-unknown-role", lambda ws, t: _chat_ft(ws, t, {"role": "bot", "content": "x"}, ASSISTANT),
     "message 2 has role 'bot'"),
    ("finetune-chat-no-assistant", lambda ws, t: _chat_ft(ws, t, {"role": "user", "content": "x"}),
     "no assistant message"),
    ("finetune-chat-content-not-a-string",
     lambda ws, t: _chat_ft(ws, t, {"role": "assistant", "content": ["x"]}), "of type list"),
    # chat
    ("serve-missing-path", lambda ws, t: ["serve", f"{t}/nope"], "does not exist"),
    ("serve-classifier-run", lambda ws, t: ["serve", str(ws / "cls")], "head"),
    ("chat-plain-lm-run", lambda ws, t: ["chat", str(ws / "run")], "is not a chat model"),
    ("chat-missing-path", lambda ws, t: ["chat", f"{t}/nope"], "does not exist"),
    ("chat-top-p-out-of-range", lambda ws, t: ["chat", str(ws / "run"), "--top-p", "2"],
     "--top-p"),
    # predict, plot
    ("predict-lm-run", lambda ws, t: ["predict", str(ws / "run"), "--device", "cpu"], "lm head"),
    ("predict-missing-run", lambda ws, t: ["predict", f"{t}/none"], "does not exist"),
    ("plot-no-metrics", lambda ws, t: ["plot", str(t), "--out", f"{t}/c.png"], "no metrics"),
    ("plot-corrupt-metrics",
     lambda ws, t: ["plot", str(_metrics_corrupt(ws, t)), "--out", f"{t}/c.png"],
     "not a metrics record"),
]  # fmt: skip


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail a case that hangs instead of hanging the suite."""

    def _raise(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_battery_covers_every_subcommand():
    commands = {name.split("-")[0] for name, _, _ in CASES}
    assert commands == set(cli.COMMANDS)  # prepare, pretrain, sample, eval, export, ...
    assert len(CASES) >= 30


@pytest.mark.parametrize("build, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_clear_line(ws, tmp_path, capsys, build, fragment):
    argv = [str(a) for a in build(ws, tmp_path)]
    capsys.readouterr()
    with _deadline(60):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse usage errors
            code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, (argv, err)
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("gptkit: error: "), err
    assert fragment in lines[0], lines[0]


def test_real_processes_print_one_line_and_no_traceback(ws, tmp_path):
    """Through `python -m gptkit`: argparse, config and file errors (started together)."""
    broken = _trunc_weights(ws, tmp_path)
    runs = {
        "not a readable safetensors": ["sample", str(broken), "--max-new-tokens", "2"],
        "did you mean 'train.lr'": _pretrain(ws, tmp_path, "train.lr_rate=1"),
        "invalid int value": ["sample", str(ws / "run"), "--top-k", "x"],
    }
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    procs = {
        frag: subprocess.Popen(
            [sys.executable, "-m", "gptkit", *argv],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for frag, argv in runs.items()
    }
    start = time.monotonic()
    for frag, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=max(1, 120 - (time.monotonic() - start)))
        finally:
            proc.kill()
        assert proc.returncode == 2, err
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gptkit: error: ") and frag in lines[0]

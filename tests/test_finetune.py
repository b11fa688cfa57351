"""`gptkit finetune`: a tiny random backbone learns a keyword task; LoRA, SFT, regression, token
classification, freezing, early stopping, resumable batches, and one-line errors for bad input."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from gptkit import artifacts
from gptkit.commands.finetune import finetune
from gptkit.config import Config, load_config, to_dict
from gptkit.data import labeled
from gptkit.data.tokenizer import get_tokenizer
from gptkit.errors import GptkitError
from gptkit.model.gpt import GPT, GPTConfig
from gptkit.model.lora import inject
from gptkit.train import checkpoint

ROOT = Path(__file__).parents[1]
CFG = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=257)


def _script():
    spec = importlib.util.spec_from_file_location("mfd", ROOT / "scripts/make_finetune_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A random byte-tokenizer backbone checkpoint and the synthetic datasets."""
    root = tmp_path_factory.mktemp("ft")
    torch.manual_seed(0)
    meta = {"config": to_dict(Config(model=CFG)), "tokenizer": get_tokenizer("byte").spec(),
            "head": {"name": "lm"}}  # fmt: skip
    checkpoint.save(root / "backbone", step=0, model=GPT(CFG), state={}, meta=meta, keep_last=1)
    mk = _script()
    for name, make in mk.MAKERS.items():
        mk.write_jsonl(root / f"{name}_train.jsonl", make(600, 0))
        mk.write_jsonl(root / f"{name}_val.jsonl", make(200, 1))
    return root


def _cfg(work, out, *overrides):
    base = [f"finetune.init_from={work}/backbone", f"train.out_dir={work}/{out}",
            f"finetune.train_file={work}/classify_train.jsonl",
            f"finetune.val_file={work}/classify_val.jsonl", "train.device=cpu",
            "train.dtype=float32", "train.batch_size=32", "train.max_steps=6",
            "train.warmup_steps=2", "train.lr=3e-3", "train.min_lr=1e-4", "train.eval_interval=0",
            "train.log_interval=20", "train.ckpt_interval=0"]  # fmt: skip
    return load_config(None, base + list(overrides))


def _weights(run):
    return artifacts.read_weights(artifacts.find_checkpoint(run) / "model.safetensors")


def _records(run):
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


def _val_rows(work, name):
    return [json.loads(line) for line in open(work / f"{name}_val.jsonl")]


def test_classification_learns_a_keyword_task(work):
    cfg = _cfg(work, "cls", "train.max_steps=60", "train.warmup_steps=10",
               "train.eval_interval=20", "finetune.head_lr=6e-3")  # fmt: skip
    last = finetune(cfg)
    assert last["val_acc"] >= 0.95 and last["val_f1"] >= 0.95, last
    summary = json.loads((work / "cls/metrics.json").read_text())
    assert summary["best_key"] == "val_acc" and summary["best"]["val_acc"] >= 0.95
    ckpt = artifacts.find_checkpoint(work / "cls")
    meta = artifacts.read_meta(ckpt)
    assert meta["head"] == {"name": "classification", "num_labels": 3, "pooling": "last",
                            "labels": ["apple", "banana", "cherry"]}  # fmt: skip
    groups = checkpoint.read_state(ckpt)["optimizer"]["param_groups"]
    assert {g["lr_scale"] for g in groups} == {1.0, 2.0}  # head_lr / lr
    assert {k.split(".")[0] for k in _weights(work / "cls")} == {"transformer", "head"}


def test_lora_keeps_backbone_bit_identical_and_merges(work):
    finetune(_cfg(work, "lora", "finetune.lora.rank=4", "finetune.lora.targets=[c_attn, c_fc]"))
    before, after = _weights(work / "backbone"), _weights(work / "lora")
    for key, value in before.items():
        if key.startswith("transformer."):
            moved = key.replace(".c_attn.", ".c_attn.base.").replace(".c_fc.", ".c_fc.base.")
            assert torch.equal(after[moved], value), key
    assert any(after[k].abs().sum() > 0 for k in after if k.endswith("lora_B"))
    merged, meta = artifacts.model_from_checkpoint(artifacts.find_checkpoint(work / "lora"))
    assert meta["lora"]["rank"] == 4
    adapted = GPT(CFG, head=merged.head)
    inject(adapted.transformer, rank=4, alpha=16.0, targets=["c_attn", "c_fc"])
    adapted.load_state_dict(after)
    idx = torch.randint(0, 256, (3, 20))
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(idx), adapted.eval()(idx), atol=1e-5, rtol=0)


def test_model_dropout_reaches_every_dropout_of_the_backbone(work):
    from gptkit.train.adapt import set_dropout

    model = artifacts.load_model(work / "backbone")
    set_dropout(model, GPTConfig(dropout=0.2), "backbone")
    assert model.config.dropout == model.transformer.config.dropout == 0.2
    drops = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.2] * (1 + 2 * CFG.n_layer)  # embeddings; attention and MLP residuals
    assert [block.attn.dropout for block in model.transformer.h] == [0.2] * CFG.n_layer
    # a model key equal to the backbone's (as in a run's own config.yaml) is not a shape change
    finetune(_cfg(work, "drop", "model.dropout=0.1", "model.n_layer=2", "train.max_steps=1",
                  "train.warmup_steps=0"))  # fmt: skip
    meta = artifacts.read_meta(artifacts.find_checkpoint(work / "drop"))
    assert meta["config"]["model"] == {**to_dict(CFG), "dropout": 0.1}


def test_finetune_presets_leave_the_model_section_to_the_backbone():
    presets = sorted(ROOT.glob("configs/finetune_*.yaml"))
    assert presets
    for preset in presets:
        assert load_config(preset).model == GPTConfig(), preset


def test_freezing_a_tied_lm_head_leaves_nothing_to_train(work):
    cfg = _cfg(work, "nothing", "finetune.head=lm", "finetune.freeze=backbone",
               "finetune.prompt_field=prompt", f"finetune.train_file={work}/sft_train.jsonl",
               "finetune.val_file=null")  # fmt: skip
    with pytest.raises(GptkitError, match="leaves nothing to train"):
        finetune(cfg)


def test_lora_run_resumes_where_it_stopped(work):
    lora = ("finetune.lora.rank=2", "train.ckpt_interval=2")
    finetune(_cfg(work, "resume", *lora, "train.max_steps=2"))
    last = finetune(_cfg(work, "resume", *lora, "train.max_steps=4"))
    assert last["step"] == 4
    state = checkpoint.read_state(artifacts.find_checkpoint(work / "resume"))
    assert state["loader"]["pos"] == 4 * 32 and state["train"]["step"] == 4
    with pytest.raises(GptkitError, match="has lora .* but this run builds None"):
        finetune(_cfg(work, "resume", "train.max_steps=6"))  # same run dir, LoRA dropped


def test_sft_puts_no_loss_on_the_prompt(work):
    tok = get_tokenizer("byte")
    ft = _cfg(work, "x", "finetune.head=lm", "finetune.prompt_field=prompt").finetune
    rows = [{"prompt": "Q: hi\n", "completion": "yo"}]
    (ex,) = labeled.encode(rows, kind="sft", tok=tok, ft=ft, labels=None, block_size=64, where="t")
    n_prompt = len("Q: hi\n")
    assert ex.ids == tok.encode("Q: hi\nyo")  # input: everything but the final end-of-text
    assert ex.target == [-100] * (n_prompt - 1) + tok.encode("yo") + [tok.eot_id]
    _, _, target = labeled.collate([ex, ex, labeled.Example([1], [-100])], kind="sft", pad_id=256)
    assert (target[2] == -100).all() and (target[:, : n_prompt - 1] == -100).all()
    last = finetune(_cfg(work, "sft", "finetune.head=lm", "finetune.prompt_field=prompt",
                         f"finetune.train_file={work}/sft_train.jsonl",
                         f"finetune.val_file={work}/sft_val.jsonl", "train.max_steps=20",
                         "train.eval_interval=20"))  # fmt: skip
    first = _records(work / "sft")[0]
    assert first["step"] == 0, first
    assert last["val_loss"] < first["val_loss"] - 1.5, (first, last)  # the untrained model
    assert last["val_ppl"] == pytest.approx(math.exp(last["val_loss"]))
    assert artifacts.read_meta(artifacts.find_checkpoint(work / "sft"))["head"] == {"name": "lm"}


def test_sft_loss_is_a_token_mean_whatever_the_accumulation_split(work):
    """Completions differ in length: batch 8 == batch 4 x grad_accum 2, step for step."""
    sft = ["finetune.head=lm", "finetune.prompt_field=prompt", "train.max_steps=4",
           f"finetune.train_file={work}/sft_train.jsonl", "train.log_interval=1",
           f"finetune.val_file={work}/sft_val.jsonl"]  # fmt: skip
    finetune(_cfg(work, "sft8", *sft, "train.batch_size=8"))
    finetune(_cfg(work, "sft4x2", *sft, "train.batch_size=4", "train.grad_accum=2"))
    a = {r["step"]: r["loss"] for r in _records(work / "sft8") if "loss" in r}
    b = {r["step"]: r["loss"] for r in _records(work / "sft4x2") if "loss" in r}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=1e-5), (step, a, b)


def test_regression_beats_the_mean_and_token_classification_the_majority(work):
    reg = finetune(_cfg(work, "reg", "finetune.head=regression", "finetune.label_field=target",
                        f"finetune.train_file={work}/regress_train.jsonl",
                        f"finetune.val_file={work}/regress_val.jsonl", "train.max_steps=60",
                        "train.warmup_steps=5"))  # fmt: skip
    targets = torch.tensor([r["target"] for r in _val_rows(work, "regress")])
    variance = targets.var(unbiased=False).item()  # the MSE of always predicting the mean
    assert reg["val_mse"] < 0.5 * variance, (reg, variance)
    tok = finetune(_cfg(work, "tok", "finetune.head=token_classification",
                        "finetune.label_field=tags", f"finetune.train_file={work}/ner_train.jsonl",
                        f"finetune.val_file={work}/ner_val.jsonl", "finetune.label_subtoken=last",
                        "train.max_steps=20", "train.warmup_steps=5"))  # fmt: skip
    ft = _cfg(work, "x", "finetune.label_field=tags", "finetune.label_subtoken=last").finetune
    val = labeled.encode(_val_rows(work, "ner"), kind="token_classification",
                         tok=get_tokenizer("byte"), ft=ft, labels=["FRUIT", "O"], block_size=64,
                         where="ner_val")  # fmt: skip
    scored = Counter(t for e in val for t in e.target if t != -100)  # the words val_acc counts
    majority = max(scored.values()) / sum(scored.values())  # always answering "O"
    assert tok["val_acc"] > majority + 0.1, (tok, majority)


def test_token_labels_go_on_each_words_first_sub_token():
    tok = get_tokenizer("byte")
    ids, firsts = labeled.encode_words(tok, ["ab", "cde", "f"], 64)
    assert ids == tok.encode("ab cde f") and firsts == [0, 3, 7]  # after each space
    assert labeled.encode_words(tok, ["ab", "cde", "f"], 64, subtoken="last")[1] == [1, 5, 7]
    assert labeled.encode_words(tok, ["ab", "cde", "f"], 5, subtoken="last")[1] == [1, -1, -1]
    ft = Config().finetune
    rows = [{"tokens": ["ab", "cde"], "label": ["X", "O"]}]
    (ex,) = labeled.encode(rows, kind="token_classification", tok=tok, ft=ft, labels=["O", "X"],
                           block_size=64, where="t")  # fmt: skip
    assert ex.target == [1, -100, -100, 0, -100, -100]


def test_freeze_first_layers_and_early_stopping(work):
    last = finetune(_cfg(work, "frz", "finetune.freeze=first_n_layers:1", "train.max_steps=50",
                         "train.lr=1e-9", "train.min_lr=0", "train.eval_interval=1",
                         "finetune.early_stopping=1", "finetune.head_lr=2e-9"))  # fmt: skip
    assert last["step"] < 50  # a flat val metric stops the run early
    before, after = _weights(work / "backbone"), _weights(work / "frz")
    for frozen in ("h.0.attn.c_attn.weight", "h.0.mlp.c_fc.bias", "wte.weight", "wpe.weight"):
        assert torch.equal(after[f"transformer.{frozen}"], before[f"transformer.{frozen}"]), frozen
    for trained in ("h.1.attn.c_attn.weight", "h.1.mlp.c_fc.bias", "ln_f.bias"):
        key = f"transformer.{trained}"
        assert not torch.equal(after[key], before[key]), trained  # tiny lr, but it moved
    # the fresh head (no "before" to compare with) took optimizer steps: AdamW state is kept
    # only for parameters that got gradients, and the head's group is the one at 2x the lr
    opt = checkpoint.read_state(artifacts.find_checkpoint(work / "frz"))["optimizer"]
    head_ids = [i for g in opt["param_groups"] if g["lr_scale"] == 2.0 for i in g["params"]]
    assert len(head_ids) == 1  # head.score.weight
    assert all(opt["state"][i]["exp_avg"].abs().sum() > 0 for i in head_ids)
    trainable = [
        k for k in after if k.startswith(("transformer.h.1.", "transformer.ln_f.", "head."))
    ]
    assert sum(len(g["params"]) for g in opt["param_groups"]) == len(trainable)


def test_csv_and_parquet_rows_and_string_int_labels(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text("text,label\nhello,10\nworld,9\nagain,10\n")
    rows = labeled.read_rows(str(tmp_path / "d.csv"))
    assert rows[0] == {"text": "hello", "label": "10"}
    # digit strings sort as numbers, so class ids follow the values
    assert labeled.label_list(rows, name="label", per_token=False, num_labels=None,
                              where="d.csv") == ["9", "10"]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert labeled.read_rows(str(tmp_path / "d.parquet")) == rows
    (tmp_path / "d.json").write_text(json.dumps(rows, indent=2))  # Alpaca style: one array
    assert labeled.read_rows(str(tmp_path / "d.json")) == rows
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert labeled.read_rows(str(tmp_path / "lines.json")) == rows  # JSON lines still work
    (tmp_path / "bad.json").write_text('[{"text": "a", "label": "x"}, "b"]')
    with pytest.raises(GptkitError, match="item 2 of the array in .*bad.json is not a JSON obj"):
        labeled.read_rows(str(tmp_path / "bad.json"))
    train, val = labeled.split_rows(list(range(10)), 0.2, seed=1)
    assert len(val) == 2 and sorted(train + val) == list(range(10))
    assert labeled.split_rows(list(range(10)), 0.2, seed=1) == (train, val)


def test_batches_resume_exactly_and_split_across_ranks():
    examples = [labeled.Example([i + 1], i % 3) for i in range(10)]
    kw = dict(kind="classification", batch_size=4, pad_id=0, seed=3)
    a = labeled.LabeledBatches(examples, **kw)
    for _ in range(3):
        a.next_batch()
    b = labeled.LabeledBatches(examples, **kw)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # plain ints survive JSON
    for _ in range(4):  # crosses epoch boundaries
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])
    one = labeled.LabeledBatches(examples, **{**kw, "batch_size": 8}).next_batch()[0]
    ranks = [labeled.LabeledBatches(examples, rank=r, world_size=2, **kw).next_batch()[0]
             for r in range(2)]  # fmt: skip
    assert torch.equal(torch.cat(ranks), one)
    evals = [list(labeled.eval_batches(examples, kind="classification", batch_size=4, pad_id=0,
                                       rank=r, world_size=3)) for r in range(3)]  # fmt: skip
    assert len({len(e) for e in evals}) == 1  # every rank runs the same number of batches
    assert sum(int(b[3].sum()) for e in evals for b in e) == len(examples)


# --------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit 2, no traceback. Three cases run as real processes (all at
# once: each costs ~4 s of torch import); the rest go through the same `cli.main` in-process.

BAD = {
    "val_label_unseen": (["finetune.val_file: {w}/bad_val.jsonl"], "'durian' in row 2"),
    "init_from_other_arch": (["finetune.init_from: {w}/bert"], "holds a 'bert' model"),
    "unknown_head": (["finetune.head: clasification"], "did you mean 'classification'"),
    "label_field_missing": (["finetune.label_field: category"], "has no field 'category'"),
    "num_labels_disagree": (["finetune.num_labels: 2"], "finetune.num_labels is 2 but"),
    "init_from_missing": (["finetune.init_from: {w}/nope"], "finetune.init_from {w}/nope does not"),
    "model_shape_set": (["model.n_layer: 4"], "remove model.n_layer from the config"),
    "jsonl_not_utf8": (["finetune.train_file: {w}/latin1.jsonl"], "latin1.jsonl is not UTF-8"),
    "csv_not_utf8": (["finetune.val_file: {w}/latin1.csv"], "{w}/latin1.csv is not UTF-8 text"),
    "parquet_corrupt": (["finetune.train_file: {w}/broken.parquet"],
                        "{w}/broken.parquet is not a readable parquet file"),
    "out_dir_is_a_file": (["train.out_dir: {w}/a_file"],
                          "cannot write the run folder train.out_dir={w}/a_file"),
}  # fmt: skip
SUBPROCESS = ("val_label_unseen", "init_from_other_arch", "unknown_head")


@pytest.fixture(scope="module")
def bad_configs(work):
    (work / "bad_val.jsonl").write_text('{"text": "a apple", "label": "apple"}\n'
                                        '{"text": "a durian", "label": "durian"}\n')  # fmt: skip
    (work / "bert").mkdir()
    (work / "bert/config.json").write_text('{"model_type": "bert"}')
    (work / "bert/model.safetensors").write_bytes(b"")
    (work / "latin1.jsonl").write_bytes(
        '{"text": "café apple", "label": "apple"}\n'.encode("latin-1")
    )
    (work / "latin1.csv").write_bytes("text,label\ncafé apple,apple\n".encode("latin-1"))
    (work / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    (work / "a_file").write_text("a file, not a folder\n")
    paths = {}
    for name, (lines, _) in BAD.items():
        paths[name] = work / f"{name}.yaml"
        paths[name].write_text(_yaml(work, name, [line.format(w=work) for line in lines]))
    return paths


@pytest.fixture(scope="module")
def bad_runs(bad_configs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "gptkit", "finetune", "-c", str(bad_configs[name])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )  # fmt: skip
        for name in SUBPROCESS
    }
    return {name: (p.wait(timeout=120), p.stderr.read()) for name, p in procs.items()}


def _yaml(work, name, lines):
    settings = {"finetune.init_from": f"{work}/backbone", "finetune.train_file":
                f"{work}/classify_train.jsonl", "finetune.val_file": f"{work}/classify_val.jsonl",
                "train.out_dir": f"{work}/{name}", "train.device": "cpu"}  # fmt: skip
    settings.update(dict(line.split(": ", 1) for line in lines))
    sections = {}
    for key, value in settings.items():
        section, field = key.split(".")
        sections.setdefault(section, []).append(f"  {field}: {value}")
    return "# test\n" + "".join(f"{s}:\n" + "\n".join(v) + "\n" for s, v in sections.items())


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_exit_2(bad_configs, bad_runs, work, name, capsys):
    if name in SUBPROCESS:
        code, err = bad_runs[name]
    else:
        from gptkit.cli import main

        code, err = main(["finetune", "-c", str(bad_configs[name])]), capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("gptkit: error: ") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert BAD[name][1].format(w=work) in err, err

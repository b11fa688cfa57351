"""Pretraining: loss falls, exact resume, DDP (2 gloo ranks) == 1 rank, global_batch_size across
rank counts, SIGTERM, wandb, guards."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import conftest
import pytest
import torch

from gptkit import artifacts, cli
from gptkit.commands.pretrain import pretrain
from gptkit.config import load_config
from gptkit.data.batches import ShardBatches
from gptkit.errors import GptkitError
from gptkit.train import checkpoint

TINY = [*conftest.TINY, "train.warmup_steps=2", "train.lr=3e-3"]


@pytest.fixture(scope="module")
def data_dir(tiny_data):
    """The shared builtin:tiny byte data (read-only)."""
    return tiny_data


def config(data_dir, run_dir, *extra):
    return load_config(None, [*TINY, f"data.dir={data_dir}", f"train.out_dir={run_dir}", *extra])


def losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def val_losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}


def test_loss_falls_in_seconds(data_dir, tmp_path):
    run = tmp_path / "run"
    last = pretrain(config(data_dir, run, "train.max_steps=40", "train.eval_interval=20"))
    curve = losses(run)
    assert sum(list(curve.values())[-5:]) / 5 < curve[1] - 1.0, curve
    assert last["val_loss"] < 4.5  # ln(257) = 5.55 at init
    assert (run / "config.yaml").is_file()
    assert artifacts.latest_checkpoint(run).name == "step_000040"


def test_resume_matches_uninterrupted_run_exactly(data_dir, tmp_path):
    common = ["train.max_steps=16", "train.ckpt_interval=8", "train.eval_interval=8",
              "train.keep_last=5", "model.dropout=0.1"]  # fmt: skip
    full = tmp_path / "full"
    pretrain(config(data_dir, full, *common))
    # A run interrupted at step 8 == a new run dir resumed from the step-8 checkpoint.
    part = tmp_path / "part"
    mid = full / "checkpoints" / "step_000008"
    pretrain(config(data_dir, part, *common, f"train.resume={mid}"))
    assert_resumed_exactly(full, part)


def assert_resumed_exactly(full, part):
    """`part`, resumed from `full`'s step-8 checkpoint, logs steps 9..16 with the same losses
    and ends with the same weights, bit for bit (fp32 CPU)."""
    a, b = losses(full), losses(part)
    assert sorted(b) == list(range(9, 17))
    for step in b:
        assert a[step] == b[step], (step, a[step], b[step])
    wa = artifacts.read_weights(full / "checkpoints/step_000016/model.safetensors")
    wb = artifacts.read_weights(part / "checkpoints/step_000016/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_auto_resume_continues_the_run(data_dir, tmp_path):
    run = tmp_path / "run"
    pretrain(config(data_dir, run, "train.max_steps=6", "train.warmup_steps=0",
                    "train.schedule=constant"))  # fmt: skip
    pretrain(config(data_dir, run, "train.max_steps=10", "train.warmup_steps=0",
                    "train.schedule=constant"))  # fmt: skip
    assert sorted(losses(run)) == list(range(1, 11))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args, env=None, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, **kw)


@pytest.fixture(scope="module")
def one_rank_dir(data_dir, tmp_path_factory):
    """The reference: one process, grad_accum 2 (the same global batch as 2 ranks x 1)."""
    one = tmp_path_factory.mktemp("one")
    pretrain(config(data_dir, one, *DIST, "train.grad_accum=2"))
    return one


DIST = ["train.max_steps=6", "train.eval_interval=3", "train.ckpt_interval=3"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_ranks_equal_one_rank_with_same_global_batch(
    data_dir, tmp_path, one_rank_dir, strategy
):
    two = tmp_path / "two"
    overrides = [*TINY, *DIST, f"data.dir={data_dir}", f"train.out_dir={two}",
                 f"train.strategy={strategy}"]  # fmt: skip
    torchrun(overrides)
    a, b = losses(one_rank_dir), losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])
    va, vb = val_losses(one_rank_dir), val_losses(two)  # the same val windows too
    assert sorted(va) == sorted(vb) == [0, 3, 6]
    for step in va:
        assert abs(va[step] - vb[step]) <= 1e-5, (step, va[step], vb[step])
    # the sharded run's checkpoint is a full, loadable model
    model, meta = artifacts.model_from_checkpoint(artifacts.latest_checkpoint(two))
    assert meta["step"] == 6 and model.config.n_layer == 2


def assert_two_ranks_equal_one(data_dir, tmp_path, common):
    """1 rank x grad_accum 2 and 2 gloo ranks x grad_accum 1 (the same global batch) log the
    same train losses for steps 1..6 (`common` holds DIST's step settings)."""
    one, two = tmp_path / "one", tmp_path / "two"
    pretrain(config(data_dir, one, *common, "train.grad_accum=2"))
    torchrun([*TINY, *common, f"data.dir={data_dir}", f"train.out_dir={two}"])
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert all(abs(a[s] - b[s]) <= 1e-5 for s in a), (a, b)


def torchrun(overrides):
    r = run_cli([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                 f"--master_port={free_port()}", "-m", "gptkit", "pretrain", *overrides])  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]


def test_two_rank_resume_with_dropout_and_accumulation_is_exact(data_dir, tmp_path):
    """no_sync micro-steps, each rank's own dropout stream and the loader all survive a resume."""
    common = [*TINY, f"data.dir={data_dir}", "train.max_steps=8", "train.ckpt_interval=4",
              "train.eval_interval=0", "train.grad_accum=2", "model.dropout=0.1"]  # fmt: skip
    full, part = tmp_path / "full", tmp_path / "part"
    torchrun([*common, f"train.out_dir={full}"])
    torchrun([*common, f"train.out_dir={part}", f"train.resume={full}/checkpoints/step_000004"])
    a, b = losses(full), losses(part)
    assert sorted(b) == [5, 6, 7, 8]
    for step in b:
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])


@pytest.fixture(scope="module")
def global_batch_dir(data_dir, tmp_path_factory):
    """One process, train.global_batch_size 8 with batch_size 4: grad_accum 2 is derived."""
    run = tmp_path_factory.mktemp("global")
    pretrain(config(data_dir, run, *DIST, "train.global_batch_size=8"))
    return run


def test_global_batch_size_derives_grad_accum(global_batch_dir, one_rank_dir):
    """global 8 / (batch 4 x 1 rank) = grad_accum 2: the explicit grad_accum=2 run, bit for bit;
    config.yaml keeps the setting as given, the loader state the derived accumulation."""
    assert losses(global_batch_dir) == losses(one_rank_dir)
    assert val_losses(global_batch_dir) == val_losses(one_rank_dir)
    saved = load_config(global_batch_dir / "config.yaml")  # loads again: not both keys set
    assert (saved.train.global_batch_size, saved.train.grad_accum) == (8, 1)
    state = checkpoint.read_state(artifacts.latest_checkpoint(global_batch_dir))
    assert (state["loader"]["grad_accum"], state["loader"]["global_batch"]) == (2, 8)


def test_global_batch_size_run_resumes_on_two_ranks(data_dir, tmp_path, global_batch_dir):
    """Started on 1 process, interrupted at step 3, resumed under torchrun on 2 gloo ranks
    (grad_accum 2 -> 1): the same data and losses as the uninterrupted 1-process run."""
    two = tmp_path / "two"
    mid = global_batch_dir / "checkpoints" / "step_000003"
    torchrun([*TINY, *DIST, "train.global_batch_size=8", f"data.dir={data_dir}",
              f"train.out_dir={two}", f"train.resume={mid}"])  # fmt: skip
    a, b = losses(global_batch_dir), losses(two)
    assert sorted(b) == [4, 5, 6]
    assert all(b[s] == pytest.approx(a[s], rel=1e-5) for s in b), (a, b)
    assert val_losses(two)[6] == pytest.approx(val_losses(global_batch_dir)[6], rel=1e-5)
    state = checkpoint.read_state(artifacts.latest_checkpoint(two))
    assert (state["loader"]["grad_accum"], state["loader"]["step"]) == (1, 6)


def test_loader_continues_on_another_number_of_ranks(data_dir):
    """The data position is per global step: 2 ranks x accum 1 pick up 1 rank x accum 2's
    stream exactly; another global batch is refused, naming train.global_batch_size."""
    common = dict(block_size=32, batch_size=2, seed=5)
    one = ShardBatches(data_dir, "train", grad_accum=2, **common)
    for _ in range(6):  # 3 steps
        one.next_batch()
    state = one.state_dict()
    ranks = [ShardBatches(data_dir, "train", rank=r, world_size=2, **common) for r in (0, 1)]
    for r in ranks:
        r.load_state_dict(state)
    for _ in range(3):
        want = torch.cat([one.next_batch()[0] for _ in range(2)])
        assert torch.equal(torch.cat([r.next_batch()[0] for r in ranks]), want)
    bigger = ShardBatches(data_dir, "train", grad_accum=2, world_size=2, **common)
    with pytest.raises(GptkitError, match="global batch of 4 .* train.global_batch_size=4 "):
        bigger.load_state_dict(state)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["train.global_batch_size=6"], "global_batch_size=6 is not divisible by train.batch_size"),
        (["train.global_batch_size=8", "train.grad_accum=2"],
         "Can't set both `train.global_batch_size` and `train.grad_accum`"),
        (["train.global_batch_size=0"], "`train.global_batch_size` must be >= 1"),
    ],
)  # fmt: skip
def test_bad_global_batch_size_exits_2_with_one_line(data_dir, tmp_path, capsys, overrides,
                                                     fragment):  # fmt: skip
    argv = ["pretrain", *TINY, f"data.dir={data_dir}", f"train.out_dir={tmp_path}/r", *overrides]
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptkit: error: ") and fragment in lines[0]
    assert not (tmp_path / "r").exists()


def test_sigterm_finishes_step_saves_and_exits_0(data_dir, tmp_path):
    run = tmp_path / "run"
    args = [*TINY, f"data.dir={data_dir}", f"train.out_dir={run}", "train.max_steps=100000",
            "train.eval_interval=0", "train.ckpt_interval=0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gptkit", "pretrain", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or len(losses(run)) < 3:
        assert time.time() < deadline and proc.poll() is None, "training did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    ckpt = artifacts.latest_checkpoint(run)
    assert ckpt is not None and artifacts.read_meta(ckpt)["step"] >= 3
    model, _ = artifacts.model_from_checkpoint(ckpt)
    assert model.config.n_layer == 2


def test_wandb_offline_writes_a_run_directory(data_dir, tmp_path):
    run = tmp_path / "run"
    pretrain(config(data_dir, run, "train.max_steps=2", "logging.wandb.enabled=true",
                    "logging.wandb.mode=offline"))  # fmt: skip
    assert list((run / "wandb").glob("offline-run-*")), os.listdir(run)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.block_size=400000", "block_size"),
        ("data.dir=/no/such/dir", "gptkit prepare"),
        ("model.vocab_size=100", "vocab_size"),
    ],
)
def test_data_model_mismatch_fails_before_training(data_dir, tmp_path, override, fragment):
    run = tmp_path / "run"
    with pytest.raises(GptkitError, match=fragment):
        pretrain(config(data_dir, run, override))
    assert not (run / "checkpoints").exists()


def test_init_from_continues_another_runs_weights(data_dir, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    pretrain(config(data_dir, first, "train.max_steps=20", "train.eval_interval=20"))
    # the shape comes from the source; only dropout may be set, other model keys must match
    pretrain(config(data_dir, second, "train.max_steps=2", "train.eval_interval=2",
                    f"train.init_from={first}", "model.dropout=0.1"))  # fmt: skip
    a, b = val_losses(first), val_losses(second)
    assert b[0] == pytest.approx(a[20], abs=1e-6)  # the same weights on the same val batches
    assert b[0] < a[0] - 0.5
    with pytest.raises(GptkitError, match="fixes the model shape"):
        pretrain(config(data_dir, tmp_path / "third", f"train.init_from={first}",
                        "model.n_layer=3"))  # fmt: skip


def test_resume_refuses_another_tokenizer(data_dir, tiny_run):
    run = tiny_run  # a 2-step run of our own
    meta_path = artifacts.latest_checkpoint(run) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["tokenizer"]["name"] = "gpt2"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(GptkitError, match="tokenizer"):
        pretrain(config(data_dir, run, "train.max_steps=4"))


def test_checkpoint_retention_keeps_last_k_and_best(data_dir, tmp_path):
    run = tmp_path / "run"
    pretrain(config(data_dir, run, "train.max_steps=8", "train.ckpt_interval=2",
                    "train.keep_last=2", "train.eval_interval=0"))  # fmt: skip
    names = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert names == ["step_000006", "step_000008"]
    shutil.rmtree(run)

"""Crash consistency, full disks and loss spikes: what survives `kill -9`, ENOSPC and NaN.

Training and prepare run in forked children (torch is already imported, so a child starts in
milliseconds) that are SIGKILLed at random moments or at every filesystem operation of a
checkpoint/shard write. After each kill `checkpoints/latest` must name a complete, loadable
checkpoint and resume must work; prepare must leave no complete-looking partial output and its
rerun must equal a clean run byte for byte. Write errors (ENOSPC, EACCES, and the real exception
types safetensors/torch raise) become one GptkitError with the previous checkpoint still latest.
Non-finite steps are skipped and counted; too many in a row stop with a clear error.
"""

import errno
import json
import math
import os
import random
import resource
import shutil
import signal
import time
from pathlib import Path

import conftest
import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors import SafetensorError

from gptkit import artifacts
from gptkit.commands.pretrain import pretrain
from gptkit.config import PrepareConfig, load_config
from gptkit.data import prepare as prepare_mod
from gptkit.data.prepare import build_shards
from gptkit.data.shards import ShardWriter, file_sha256, read_meta, read_shard
from gptkit.errors import GptkitError
from gptkit.train import checkpoint
from gptkit.train import tasks as tasks_mod

TINY = [*conftest.TINY, "train.warmup_steps=0", "train.eval_interval=0", "train.lr=3e-3"]


@pytest.fixture(scope="module")
def data_dir(tiny_data):
    """The shared builtin:tiny byte data (read-only)."""
    return tiny_data


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 text files, ~200 KB: a source that lists in microseconds (builtin: walks the stdlib)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "naïve", "café", "λ", "x = 1\n", "🙂"]
    for i in range(40):
        (root / f"{i:02d}.txt").write_text(" ".join(rng.choices(words, k=800)), encoding="utf-8")
    return root


def _prep_cfg(out, source, **kw) -> PrepareConfig:
    return PrepareConfig(source=str(source), tokenizer="byte", out_dir=str(out), workers=1,
                         val_fraction=0.1, **kw)  # fmt: skip


def config(data_dir, run, *extra):
    return load_config(None, [*TINY, f"data.dir={data_dir}", f"train.out_dir={run}", *extra])


def _copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


# --- forked children ---------------------------------------------------------------------------


def _fork(fn, *, new_group=False) -> int:
    """Run fn() in a forked child whose output goes to /dev/null; returns its pid."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 3
        try:
            if new_group:
                os.setsid()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            fn()
            code = 0
        finally:
            os._exit(code)
    return pid


def _wait(pid: int, timeout: float = 60) -> int:
    """Exit status of a child (negative: killed by that signal); kills it at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} hung for {timeout} s")


def _kill_at(n: int, targets: dict, *, torn=False, arm=None, trace: Path | None = None):
    """In a child: SIGKILL this process at the n-th call of any `targets` function.

    targets: {(owner, attribute): index of the path argument or None}. torn=True lets a call
    that writes a file run and then cuts that file in half before dying (a torn write).
    `arm` = (owner, attribute) of a function whose first call starts the counting; `trace` gets
    "attribute path_arg" of the call that died."""
    state = {"count": 0, "armed": arm is None}

    def wrap(fn, name, path_arg):
        def wrapper(*args, **kwargs):
            if state["armed"]:
                state["count"] += 1
                if state["count"] == n:
                    if trace is not None:
                        trace.write_text(f"{name} {path_arg}")
                    if torn and path_arg is not None:
                        fn(*args, **kwargs)
                        path = Path(args[path_arg])
                        os.truncate(path, path.stat().st_size // 2)
                    os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)

        return wrapper

    for (owner, name), path_arg in targets.items():
        setattr(owner, name, wrap(getattr(owner, name), name, path_arg))
    if arm is not None:
        owner, name = arm
        original = getattr(owner, name)

        def armed(*args, **kwargs):
            state["armed"] = True
            return original(*args, **kwargs)

        setattr(owner, name, armed)


# --- what must hold after any kill -------------------------------------------------------------


def _check_checkpoints(run: Path) -> int | None:
    """`latest` names a complete, loadable checkpoint, and so does every step_* dir; its step."""
    root = run / "checkpoints"
    for ckpt in sorted(root.glob("step_*")):
        assert sorted(p.name for p in ckpt.iterdir()) == [
            "meta.json", "model.safetensors", "state.pt"], ckpt  # fmt: skip
        model, meta = artifacts.model_from_checkpoint(ckpt)
        state = checkpoint.read_state(ckpt)
        assert state["train"]["step"] == meta["step"] == int(ckpt.name[5:])
        assert all(torch.isfinite(p).all() for p in model.parameters())
    if not (root / "latest").exists():
        return None  # killed before the first pointer was written
    name = (root / "latest").read_text().strip()
    assert (root / name / "meta.json").is_file(), f"latest names {name!r}, which is incomplete"
    return int(name[5:])


def _metric_lines(run: Path) -> int:
    path = run / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def _wait_for(condition, pid, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the child did not start training"
        done, status = os.waitpid(pid, os.WNOHANG)
        assert not done, f"the child exited early ({os.waitstatus_to_exitcode(status)})"
        time.sleep(0.005)


def test_kill_9_at_random_moments_keeps_latest_loadable_and_resumable(
    data_dir, shared_tiny_run, tmp_path
):
    # shared_tiny_run trained in this process: torch's lazy imports are done before children fork
    run = tmp_path / "run"
    cfg = config(data_dir, run, "train.max_steps=100000", "train.ckpt_interval=1",
                 "train.keep_last=2")  # fmt: skip
    rng = random.Random(8)
    steps, torn = [], 0
    for _ in range(20):
        lines = _metric_lines(run)
        pid = _fork(lambda: pretrain(cfg))
        _wait_for(lambda n=lines: _metric_lines(run) > n, pid)  # it resumed and trains
        time.sleep(rng.uniform(0.0, 0.4))  # the kill moment itself is what is random here
        os.kill(pid, signal.SIGKILL)
        assert _wait(pid) == -signal.SIGKILL
        if (run / "checkpoints").is_dir():
            torn += any(p.name.startswith(".") for p in (run / "checkpoints").iterdir())
        step = _check_checkpoints(run) or 0
        assert step >= (steps[-1] if steps else 0)  # latest never goes back
        steps.append(step)
    assert steps[-1] >= 20, steps  # every round resumed and made progress
    last = pretrain(config(data_dir, run, f"train.max_steps={steps[-1] + 2}",
                           "train.ckpt_interval=1", "train.keep_last=2"))  # fmt: skip
    assert last["step"] == steps[-1] + 2 and _check_checkpoints(run) == steps[-1] + 2
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    print(f"kill rounds: latest steps {steps}; {torn} kills left a half-written temp file")


# Every filesystem operation of checkpoint.save (and its prune, file by file) is a place to die.
def _ckpt_targets():
    return {(safetensors.torch, "save_file"): 1, (torch, "save"): 1,
            (checkpoint, "_write_json"): 0, (os, "fsync"): None, (os, "replace"): None,
            (shutil, "rmtree"): None, (os, "unlink"): None, (os, "rmdir"): None}  # fmt: skip


@pytest.mark.parametrize("start", ["after-step-2", "unnamed-step-3-exists"])
def test_kill_9_at_every_checkpoint_write_step(data_dir, tiny_run, tmp_path, start):
    """Resume at step 2 and die at each operation of saving step 3; in the second case a
    complete step_000003 that `latest` does not name yet (a kill between rename and pointer)
    is re-saved, so the old copy must be replaced atomically too."""
    origin = tiny_run  # our own copy of a run with one checkpoint (step 2)
    if start == "unnamed-step-3-exists":
        pretrain(config(data_dir, origin, "train.max_steps=3", "train.keep_last=2"))
        (origin / "checkpoints" / "latest").write_text("step_000002\n")
    trace, kills, n = tmp_path / "trace", [], 0
    while True:
        n += 1
        for torn in (False, True):
            run = _copy(origin, tmp_path / f"run{n}{'t' * torn}")
            trace.unlink(missing_ok=True)

            def child(n=n, torn=torn, run=run):
                _kill_at(n, _ckpt_targets(), torn=torn, arm=(checkpoint, "save"), trace=trace)
                pretrain(config(data_dir, run, "train.max_steps=3", "train.keep_last=1"))

            status = _wait(_fork(child))
            if status == 0:
                assert n > 10, f"a save should take ~13 operations, it took {n - 1}"
                assert len(kills) >= 15, kills
                print(f"killed inside checkpoint.save at: {kills}")
                return
            assert status == -signal.SIGKILL
            kills.append(trace.read_text())
            assert _check_checkpoints(run) in (2, 3)  # the old one, or the complete new one
            last = pretrain(config(data_dir, run, "train.max_steps=4", "train.keep_last=1"))
            assert last["step"] == 4 and _check_checkpoints(run) == 4
            shutil.rmtree(run)
            if kills[-1].endswith("None"):
                break  # not a file write: a torn variant is the same kill


# --- prepare ---------------------------------------------------------------------------------


def _prep_targets():
    return {(ShardWriter, "write"): None, (os, "fsync"): None, (os, "replace"): None,
            (shutil, "rmtree"): None}  # fmt: skip


def _folder_bytes(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _check_prepared(out: Path, allowed: list[dict]):
    """out is absent, or a complete folder equal to one of `allowed` (and self-consistent)."""
    if not out.exists():
        return
    meta = read_meta(out)
    listed = {s["file"]: s for split in meta["splits"].values() for s in split["shards"]}
    assert sorted(p.name for p in out.iterdir()) == sorted([*listed, "meta.json"])
    for name, shard in listed.items():
        assert len(read_shard(out / name)) == shard["tokens"]
        assert file_sha256(out / name) == shard["sha256"]
    assert _folder_bytes(out) in allowed


@pytest.mark.parametrize("replacing", [False, True], ids=["fresh", "force-over-old"])
def test_kill_9_at_every_prepare_write_step(corpus, tmp_path, replacing):
    clean_dir = tmp_path / "clean"
    build_shards(_prep_cfg(clean_dir, corpus, shard_tokens=30_000), progress=False)
    clean = _folder_bytes(clean_dir)
    old_dir = tmp_path / "old"
    build_shards(_prep_cfg(old_dir, corpus, shard_tokens=30_000, seed=7), progress=False)
    old = _folder_bytes(old_dir)
    assert old != clean and len(clean) >= 7  # several shards to die between
    out = tmp_path / "data" / "out"
    kills = 0
    for n in range(1, 200):
        if out.parent.exists():
            shutil.rmtree(out.parent)
        if replacing:
            shutil.copytree(old_dir, out)
        cfg = _prep_cfg(out, corpus, shard_tokens=30_000)

        def child(n=n, cfg=cfg):
            _kill_at(n, _prep_targets(), torn=False)
            build_shards(cfg, force=replacing, progress=False)

        status = _wait(_fork(child))
        if status == 0:
            break
        assert status == -signal.SIGKILL
        kills += 1
        _check_prepared(out, [clean, old] if replacing else [clean])
        build_shards(cfg, force=True, progress=False)  # the rerun
        assert _folder_bytes(out) == clean
        assert os.listdir(out.parent) == ["out"]  # stale temp folders of dead runs are gone
    assert kills >= 20, kills


def test_kill_9_of_prepare_with_workers_leaves_no_process_behind(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_mod, "CHUNK_DOCS", 2)  # many tasks in flight in the pool
    out = tmp_path / "out"
    cfg = _prep_cfg(out, corpus, shard_tokens=30_000)
    cfg.workers = 2

    def child():
        _kill_at(3, {(ShardWriter, "write"): None})
        build_shards(cfg, progress=False)

    pid = _fork(child, new_group=True)
    assert _wait(pid) == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while True:  # pool workers notice their parent is gone and exit
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            raise AssertionError("prepare's worker processes outlived a kill -9 of prepare")
        time.sleep(0.05)
    assert not out.exists()
    build_shards(_prep_cfg(out, corpus, shard_tokens=30_000), progress=False)
    assert os.listdir(tmp_path) == ["out"]


# --- full disks and permissions ----------------------------------------------------------------


def _fail_with(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


def _failing_write(target: str, err: int, monkeypatch):
    """Make one step of a checkpoint write fail like a full disk or a read-only folder."""
    oserror = OSError(err, os.strerror(err))
    if target == "safetensors":
        monkeypatch.setattr(safetensors.torch, "save_file", _fail_with(oserror))
    elif target == "safetensors-real-type":  # what safetensors really raises on ENOSPC
        msg = f"Error while serializing: I/O error: {os.strerror(err)} (os error {err})"
        monkeypatch.setattr(safetensors.torch, "save_file", _fail_with(SafetensorError(msg)))
    elif target == "torch.save":
        monkeypatch.setattr(torch, "save", _fail_with(oserror))
    elif target == "torch.save-real-type":  # what torch.save really raises on ENOSPC
        msg = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
        monkeypatch.setattr(torch, "save", _fail_with(RuntimeError(msg)))
    elif target in ("rename", "latest"):
        real = os.replace

        def replace(src, dst):
            hit = Path(dst).name == "latest" if target == "latest" else "step_" in str(dst)
            if hit:
                raise oserror
            return real(src, dst)

        monkeypatch.setattr(os, "replace", replace)
    elif target == "mkdir":
        real_mkdir = Path.mkdir

        def mkdir(self, *a, **k):
            if self.name.startswith(".tmp_step_"):
                raise oserror
            return real_mkdir(self, *a, **k)

        monkeypatch.setattr(Path, "mkdir", mkdir)


WRITES = ["safetensors", "safetensors-real-type", "torch.save", "torch.save-real-type",
          "rename", "latest", "mkdir"]  # fmt: skip


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES], ids=["ENOSPC", "EACCES"])
@pytest.mark.parametrize("target", WRITES)
def test_failed_checkpoint_write_is_one_clear_error_and_keeps_latest(
    data_dir, tiny_run, monkeypatch, target, err
):
    run = tiny_run  # our own copy of a run with one checkpoint (step 2)
    _failing_write(target, err, monkeypatch)
    with pytest.raises(GptkitError, match=r"could not write checkpoint .*step_000003") as e:
        pretrain(config(data_dir, run, "train.max_steps=3", "train.keep_last=1"))
    if "real-type" not in target:
        assert os.strerror(err) in str(e.value)
    assert "previous checkpoint is intact" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.undo()
    assert _check_checkpoints(run) == 2  # still latest, still loadable
    left = {p.name for p in (run / "checkpoints").iterdir()}
    if target == "latest":  # renamed into place before the pointer failed: complete, unnamed
        left.discard("step_000003")
    assert left == {"latest", "step_000002"}  # no temp files either


def test_a_real_write_failure_is_a_gptkit_error_and_resume_works(data_dir, tiny_run):
    """RLIMIT_FSIZE makes the kernel fail big writes (EFBIG) inside safetensors and torch."""
    run = tiny_run  # our own copy of a run with one checkpoint (step 2)
    cfg = config(data_dir, run, "train.max_steps=3", "train.keep_last=1")
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, old_limit[1]))  # weights are ~170 KB
    try:
        with pytest.raises(GptkitError, match="could not write checkpoint .*File too large"):
            pretrain(cfg)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert _check_checkpoints(run) == 2
    assert pretrain(cfg)["step"] == 3 and _check_checkpoints(run) == 3


class _FullDisk:
    """A file whose writes fail with ENOSPC once `budget` bytes were written to all of them."""

    budget = 0

    def __init__(self, f):
        self.f = f

    def write(self, data):
        if _FullDisk.budget < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _FullDisk.budget -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("replacing", [False, True], ids=["fresh", "force-over-old"])
@pytest.mark.parametrize("err", ["ENOSPC-mid-shard", "EACCES-rename"])
def test_failed_shard_write_is_one_clear_error_and_no_output(corpus, tmp_path, monkeypatch,
                                                             replacing, err):  # fmt: skip
    out = tmp_path / "out"
    if replacing:
        build_shards(_prep_cfg(out, corpus, seed=7), progress=False)
    before = _folder_bytes(out) if replacing else None
    if err == "ENOSPC-mid-shard":
        real_open = ShardWriter._open

        def _open(self):
            real_open(self)
            self._file = _FullDisk(self._file)

        _FullDisk.budget = 100_000  # bytes: the train shard (~400 KB) does not fit
        monkeypatch.setattr(ShardWriter, "_open", _open)
        reason = "No space left on device"
    else:
        real_replace = os.replace

        def replace(src, dst):
            if Path(dst).suffix == ".bin":
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dst))
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        reason = "Permission denied"
    with pytest.raises(GptkitError, match=f"prepare stopped .*{reason}.*is unchanged"):
        build_shards(_prep_cfg(out, corpus), force=replacing, progress=False)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == (["out"] if replacing else [])  # no temp folder left
    if replacing:
        assert _folder_bytes(out) == before


# --- loss spikes -------------------------------------------------------------------------------


def _spiky_loss(bad_steps: set, mode: str, snapshots: list):
    """lm_loss that snapshots the weights and makes the loss (or the gradients) of `bad_steps`
    non-finite. Call k is optimizer step k+1 (grad_accum 1; eval goes through train/evaluate.py, unpatched)."""
    real, hooks = tasks_mod.lm_loss, []

    def loss(model, batch):
        for h in hooks:
            h.remove()
        hooks.clear()
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        step = len(snapshots)
        value = real(model, batch)
        if step not in bad_steps:
            return value
        if mode == "grad":  # a finite loss whose backward produces inf
            p = model.transformer.wte.weight
            hooks.append(p.register_hook(lambda g: torch.full_like(g, math.inf)))
            return value
        return value * (math.inf if mode == "inf" else math.nan)

    return loss


@pytest.mark.parametrize("mode", ["nan", "inf", "grad"])
def test_non_finite_steps_are_skipped_counted_and_training_continues(
    data_dir, tmp_path, monkeypatch, mode
):
    run, snaps, bad = tmp_path / "run", [], {3, 5, 6}
    monkeypatch.setattr(tasks_mod, "lm_loss", _spiky_loss(bad, mode, snaps))
    last = pretrain(config(data_dir, run, "train.max_steps=9", "train.max_bad_steps=2"))
    assert last["step"] == 9 and math.isfinite(last["loss"]) and len(snaps) == 9
    final = artifacts.read_weights(artifacts.latest_checkpoint(run) / "model.safetensors")
    after = [*snaps[1:], final]  # weights after step k = weights seen by step k+1
    for step in range(1, 10):
        same = all(torch.equal(snaps[step - 1][k], after[step - 1][k]) for k in final)
        assert same == (step in bad), step  # a bad step leaves every weight unchanged
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    skipped = {r["step"]: r["skipped_steps"] for r in records if "skipped_steps" in r}
    assert skipped == {s: sum(b <= s for b in bad) for s in range(1, 10)}
    if mode != "grad":
        assert all(records[s - 1]["loss"] is None for s in bad)  # strict JSON: null, not NaN


def test_too_many_bad_steps_in_a_row_stop_with_the_last_good_checkpoint(
    data_dir, tmp_path, monkeypatch
):
    run, snaps = tmp_path / "run", []
    monkeypatch.setattr(tasks_mod, "lm_loss", _spiky_loss(set(range(4, 100)), "nan", snaps))
    with pytest.raises(GptkitError, match="3 non-finite steps in a row at step 6.*intact"):
        pretrain(config(data_dir, run, "train.max_steps=20", "train.max_bad_steps=2",
                        "train.ckpt_interval=2"))  # fmt: skip
    step = _check_checkpoints(run)
    assert step == 4  # step 6 raised before its checkpoint
    weights = artifacts.read_weights(run / "checkpoints" / "step_000004" / "model.safetensors")
    assert all(torch.equal(weights[k], snaps[3][k]) for k in weights)  # = after step 3, finite
    assert all(np.isfinite(w.numpy()).all() for w in weights.values())

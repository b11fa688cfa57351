"""Training checkpoints: atomic save, retention, and what a resumed run reads back.

`RUN_DIR/checkpoints/step_000500/` holds `model.safetensors` (weights, backbone `transformer.*`
and head `head.*` apart by prefix), `state.pt` (optimizer, scaler, RNG, loader: tensors and
plain types, read with `weights_only=True`) and `meta.json`. A folder is written under a
temporary name and renamed; `checkpoints/latest` names the newest complete one. Loading a
model for use (sample, eval, export) is `gptkit.artifacts`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError

from gptkit import __version__
from gptkit.artifacts import find_checkpoint, latest_checkpoint, read_meta, step_number
from gptkit.errors import GptkitError
from gptkit.model.config import GPTConfig

FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Saving


def save(run_dir, *, step: int, model, state: dict, meta: dict, keep_last: int, best=None) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, prune old ones; return its path.

    `best` names the best-by-val checkpoint, which retention never deletes."""
    root = Path(run_dir) / "checkpoints"
    name = f"step_{step:06d}"
    final, tmp = root / name, root / f".tmp_{name}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        weights = model if isinstance(model, dict) else model.state_dict()
        tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
        safetensors.torch.save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        torch.save(state, tmp / "state.pt")
        header = {"format_version": FORMAT_VERSION, "gptkit_version": __version__, "step": step}
        _write_json(tmp / "meta.json", {**header, **meta})
        for f in tmp.iterdir():
            _fsync(f)
        if final.exists():  # re-saving a step: move the old copy aside in one atomic step
            _discard(final)
        os.replace(tmp, final)
        write_text_atomic(root / "latest", name + "\n")
    except (OSError, RuntimeError, SafetensorError) as e:  # torch.save/safetensors: not OSError
        shutil.rmtree(tmp, ignore_errors=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else _first_line(e)
        raise GptkitError(
            f"could not write checkpoint {final} ({reason}); free disk space or fix "
            "permissions, then resume: the previous checkpoint is intact"
        ) from None
    _prune(root, keep_last, keep={name, best})
    return final


def _prune(root: Path, keep_last: int, keep: set):
    steps = sorted((p.name for p in root.glob("step_*") if p.is_dir()), key=step_number)
    for name in steps[:-keep_last]:
        if name not in keep:
            _discard(root / name)
    for tmp in root.glob(".tmp_*"):  # left by a killed writer
        if not tmp.name.endswith(f"_{os.getpid()}"):
            shutil.rmtree(tmp, ignore_errors=True)
    for tmp in root.glob(".latest.tmp*"):  # ours is renamed by now: any left is a killed one's
        tmp.unlink(missing_ok=True)


def _discard(ckpt: Path):
    """Delete a checkpoint dir; renamed first, so a kill never leaves a half-deleted step_*."""
    trash = ckpt.with_name(f".tmp_del_{ckpt.name}_{os.getpid()}")
    try:
        os.replace(ckpt, trash)
    except OSError:
        trash = ckpt  # gone already, or not renamable: delete it where it is
    shutil.rmtree(trash, ignore_errors=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def write_text_atomic(path: Path, text: str):
    """Write a small text file via temp + fsync + rename, so readers never see half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj):
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")


def _fsync(path: Path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def rng_state() -> dict:
    """Python, numpy, torch CPU (and CUDA) RNG states as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    """Restore what `rng_state` captured."""
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# --------------------------------------------------------------------------------------------
# Resuming


def read_state(ckpt: Path) -> dict:
    """state.pt, loaded without unpickling arbitrary objects."""
    try:
        return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise GptkitError(
            f"refusing to load {ckpt}/state.pt: it holds Python objects other than tensors and "
            "plain types, which could run code (not a gptkit state file; possibly malicious)"
        ) from None
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable file
        raise GptkitError(
            f"refusing to load {ckpt}/state.pt: not a plain-tensor state file ({_first_line(e)})"
        ) from None


def resume_checkpoint(cfg, run_dir: Path, tokenizer: dict) -> Path | None:
    """The checkpoint to continue from (`train.resume`), checked against this run's config."""
    mode = cfg.train.resume
    if mode == "never":
        if latest_checkpoint(run_dir) is not None:
            raise GptkitError(
                f"{run_dir} already has checkpoints and train.resume is never; choose another "
                "train.out_dir, delete the old run, or set train.resume=auto"
            )
        return None
    ckpt = latest_checkpoint(run_dir) if mode == "auto" else find_checkpoint(mode)
    if ckpt is None:
        return None
    meta = read_meta(ckpt)
    if meta.get("tokenizer") != tokenizer:
        raise GptkitError(
            f"checkpoint {ckpt} was trained with tokenizer {meta.get('tokenizer', {}).get('name')}"
            f" but {cfg.data.dir} uses {tokenizer.get('name')}; point data.dir at matching data "
            "or start a new run (train.resume=never, new train.out_dir)"
        )
    if _saved_model(meta) != dataclasses.asdict(cfg.model):
        raise GptkitError(
            f"model config differs from checkpoint {ckpt}; resume with the same model section "
            "or start a new run in another train.out_dir"
        )
    return ckpt


def _saved_model(meta: dict) -> dict | None:
    """A checkpoint's model section with today's defaults filled in (older runs lack new keys)."""
    saved = meta["config"].get("model") if isinstance(meta["config"], dict) else None
    try:
        return dataclasses.asdict(GPTConfig(**saved))
    except (TypeError, ValueError):
        return saved

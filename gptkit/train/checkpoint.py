"""Checkpoints: atomic save, retention, resume, and loading models for use.

`RUN_DIR/checkpoints/step_000500/` holds `model.safetensors` (weights, backbone `transformer.*`
and head `head.*` apart by prefix), `state.pt` (optimizer, scaler, RNG, loader: tensors and
plain types, read with `weights_only=True`) and `meta.json`. A folder is written under a
temporary name and renamed; `checkpoints/latest` names the newest complete one.
"""

from __future__ import annotations

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
from gptkit.errors import GptkitError
from gptkit.model.gpt import GPT, GPTConfig
from gptkit.model.heads import build_head
from gptkit.model.lora import inject, merge

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
    steps = sorted((p.name for p in root.glob("step_*") if p.is_dir()), key=_step_number)
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


def _step_number(name: str) -> int:
    """step_000500 -> 500 (numeric order stays right past step 999,999)."""
    digits = name[len("step_") :]
    return int(digits) if digits.isdigit() else -1


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
# Finding and reading


def find(path) -> Path:
    """A run dir (-> its latest checkpoint) or a checkpoint dir -> the checkpoint dir."""
    p = Path(path)
    if not p.exists():
        raise GptkitError(f"{p} does not exist; pass a run dir, a checkpoint dir or an HF dir")
    if (p / "model.safetensors").is_file() and (p / "meta.json").is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise GptkitError(
            f"no checkpoint in {p} (expected {p}/checkpoints/latest or model.safetensors + "
            "meta.json); train it first or pass a checkpoint dir"
        )
    return latest


def latest_checkpoint(run_dir) -> Path | None:
    """The checkpoint `latest` names, else the newest complete one, else None."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
        if name.startswith("step_") and name.isprintable() and "/" not in name:
            if (root / name / "meta.json").is_file():
                return root / name
    done = sorted((p for p in root.glob("step_*") if (p / "meta.json").is_file()),
                  key=lambda p: _step_number(p.name))  # fmt: skip
    return done[-1] if done else None


def read_meta(ckpt: Path) -> dict:
    """meta.json of a checkpoint dir, validated."""
    try:
        meta = json.loads((ckpt / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GptkitError(
            f"{ckpt}/meta.json is unreadable ({e}); the checkpoint is corrupt"
        ) from None
    if not isinstance(meta, dict) or "config" not in meta:
        raise GptkitError(f"{ckpt}/meta.json is not a gptkit checkpoint (no 'config')")
    return meta


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


def read_weights(path: Path) -> dict:
    """A safetensors file -> state dict, with a clear error when it is corrupt."""
    try:
        return safetensors.torch.load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise GptkitError(f"{path} is not a readable safetensors file ({e}); re-save it") from None


def model_from_checkpoint(ckpt: Path, *, strict: bool = True) -> tuple[GPT, dict]:
    """Rebuild the model a checkpoint's meta.json describes and load its weights."""
    meta = read_meta(ckpt)
    try:
        config = GPTConfig(**meta["config"]["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise GptkitError(f"{ckpt}/meta.json has an invalid model config ({e})") from None
    model = GPT(config, head=build_head(meta.get("head", {"name": "lm"}), config))
    if meta.get("lora"):  # a LoRA fine-tune: its weights hold adapters beside the frozen base
        inject(model.transformer, **meta["lora"])
    weights = read_weights(ckpt / "model.safetensors")
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # a tensor's shape differs from the one meta.json describes
        lines = [line.strip() for line in str(e).splitlines() if "mismatch" in line]
        raise GptkitError(
            f"{ckpt}/model.safetensors does not match its meta.json "
            f"({(lines or [_first_line(e)])[0][:200]}); the checkpoint is from another architecture"
        ) from None
    if strict and (missing or unexpected):
        raise GptkitError(
            f"{ckpt}/model.safetensors does not match its meta.json (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); the checkpoint is from another architecture"
        )
    if meta.get("lora"):
        merge(model.transformer)  # plain Linear weights: sample, predict and export need no LoRA
    return model, meta


def load_model(path, device="cpu") -> GPT:
    """A run dir, checkpoint dir, gptkit/HF export dir or hf:NAME -> model in eval mode."""
    from gptkit.model import hf

    export = export_config(path)
    if export is not None and export.get("format") == "gptkit":  # export --format safetensors
        model = _model_from_export(Path(path), export)
    elif str(path).startswith("hf:") or hf.is_hf_dir(path):
        model = hf.load_hf(path)
    else:
        model, _ = model_from_checkpoint(find(path))
    return model.to(device).eval()


def load_tokenizer(path):
    """The tokenizer a model was trained with (HF dirs: gptkit.json's, else gpt2)."""
    from gptkit.data.tokenizer import get_tokenizer
    from gptkit.model import hf

    export = export_config(path)
    if export is not None and "tokenizer" in export:
        return get_tokenizer(export["tokenizer"])
    sidecar = Path(str(path)) / "gptkit.json"  # written beside an HF export by `gptkit export`
    if sidecar.is_file():
        return get_tokenizer(_read_json(sidecar)["tokenizer"])
    if str(path).startswith("hf:") or hf.is_hf_dir(path):
        return get_tokenizer("gpt2")
    meta = read_meta(find(path))
    if "tokenizer" not in meta:
        raise GptkitError(f"{path} has no tokenizer in its meta.json; it cannot decode text")
    return get_tokenizer(meta["tokenizer"])


def export_config(path) -> dict | None:
    """config.json of a `gptkit export --format safetensors` dir, else None."""
    p = Path(str(path)) / "config.json"
    if str(path).startswith("hf:") or not p.is_file():
        return None
    cfg = _read_json(p)
    return cfg if isinstance(cfg, dict) and cfg.get("format") == "gptkit" else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GptkitError(f"{path} is unreadable ({e}); re-export the model") from None


def _model_from_export(path: Path, cfg: dict) -> GPT:
    try:
        config = GPTConfig(**cfg["model"])
        model = GPT(config, head=build_head(cfg.get("head", {"name": "lm"}), config))
    except (KeyError, TypeError, ValueError) as e:
        raise GptkitError(f"{path}/config.json has an invalid model config ({e})") from None
    try:
        model.load_state_dict(read_weights(path / "model.safetensors"))
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise GptkitError(
            f"{path}/model.safetensors does not match config.json ({first})"
        ) from None
    return model

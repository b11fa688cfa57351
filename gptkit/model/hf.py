"""Hugging Face model dirs <-> gptkit: GPT-2, Llama, Qwen2 and Qwen3 (local dirs; hub when online).

`load_hf("path/to/dir")` or `load_hf("hf:NAME")` -> `GPT`; `save_hf(model, "out/")` writes
config.json + model.safetensors that transformers' `AutoModelForCausalLM` reads. This module
reads and writes folders; the per-architecture config and key maps are hf_gpt2.py and
hf_llama.py.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import torch

from gptkit.errors import GptkitError
from gptkit.model import hf_gpt2, hf_llama
from gptkit.model.gpt import GPT, GPTConfig, LMHead

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
ARCHITECTURES = {t: hf_gpt2 for t in hf_gpt2.MODEL_TYPES} | {
    t: hf_llama for t in hf_llama.MODEL_TYPES
}


def is_hf_dir(path) -> bool:
    """True if `path` is a folder with a Hugging Face config.json and a weights file."""
    p = Path(path)
    if not (p / "config.json").is_file() or not any((p / f).is_file() for f in _WEIGHT_FILES):
        return False
    return not _is_gptkit_export(p / "config.json")


def _is_gptkit_export(config: Path) -> bool:
    """`gptkit export --format safetensors` writes config.json + model.safetensors too, in our
    own key names: its config.json says "format": "gptkit" (checkpoint.load_model reads it)."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return False  # load_hf reports the unreadable file
    return isinstance(data, dict) and data.get("format") == "gptkit"


def load_hf(path_or_name: str | os.PathLike) -> GPT:
    """A model from a local HF dir or a hub name `hf:NAME` -> our `GPT` (fp32, CPU, eval mode).

    Weights stored in bf16/fp16 (`torch_dtype`) are upcast to fp32; `sample --dtype` or the
    training dtype casts them again as configured."""
    path = str(path_or_name)
    folder = _download(path[3:]) if path.startswith("hf:") else Path(path)
    if not is_hf_dir(folder):
        raise GptkitError(
            f"{folder} is not a Hugging Face model dir (needs config.json and model.safetensors "
            "or pytorch_model.bin); pass a folder written by save_pretrained"
        )
    raw = _read_json(folder / "config.json")
    arch = _architecture(raw, where=str(folder / "config.json"))
    config = arch.config_from_hf(raw, where=str(folder / "config.json"))
    state = arch.to_gptkit(_read_weights(folder), config, where=str(folder))
    _check_keys(state, config, str(folder))
    with torch.device("meta"):
        model = GPT(config)  # no random init: every tensor is assigned from the file
    state = {k: v.float() for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.float().eval()


def config_from_hf(hf: dict, *, where: str = "config.json") -> GPTConfig:
    """Translate an HF config.json (any supported architecture) to a GPTConfig."""
    return _architecture(hf, where=where).config_from_hf(hf, where=where)


def _architecture(hf: dict, *, where: str):
    kind = hf.get("model_type")
    if kind not in ARCHITECTURES:
        raise GptkitError(
            f"{where} holds a {kind!r} model; gptkit converts {', '.join(ARCHITECTURES)} "
            "(model_type in config.json)"
        )
    return ARCHITECTURES[kind]


def _check_keys(out: dict, config: GPTConfig, where: str):
    with torch.device("meta"):
        want = GPT(config).state_dict()
    missing = sorted(set(want) - set(out))
    extra = sorted(set(out) - set(want))
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise GptkitError(
            f"weights in {where} do not match its config.json ({what}); is the file complete?"
        )
    for k, t in out.items():
        if t.shape != want[k].shape:
            raise GptkitError(
                f"weights in {where}: {k} has shape {tuple(t.shape)}, config.json implies "
                f"{tuple(want[k].shape)}; config.json and the weights disagree"
            )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GptkitError(f"cannot read {path} ({e}); is it a valid config.json?") from None
    if not isinstance(data, dict):
        raise GptkitError(f"{path} holds a {type(data).__name__}, not a JSON object; fix the file")
    return data


def _read_weights(folder: Path) -> dict:
    """The state dict of an HF dir; pytorch_model.bin only through torch's weights_only loader."""
    from safetensors.torch import load_file

    path = folder / "pytorch_model.bin"
    try:
        if (folder / "model.safetensors").is_file():
            path = folder / "model.safetensors"
            return load_file(path)
        if (folder / "model.safetensors.index.json").is_file():
            path = folder / "model.safetensors.index.json"
            index = _read_json(path)
            state = {}
            for shard in sorted(set(index["weight_map"].values())):
                path = folder / shard
                state.update(load_file(path))
            return state
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise GptkitError(
            f"refusing to load {path}: it holds Python objects other than tensors, which could "
            "run code; convert the model to model.safetensors with a trusted tool"
        ) from None
    except GptkitError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors/torch raise several types on bad files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise GptkitError(f"cannot read weights {path} ({first}); is the file complete?") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise GptkitError(f"{path} is not a state dict of tensors; is it a model weights file?")
    return state


def _download(name: str) -> Path:
    """Fetch config + weights of hub model NAME (or find them in the local HF cache)."""
    hint = (
        f"cannot fetch hf:{name} from the Hugging Face hub (offline?); download it elsewhere with "
        f"`huggingface-cli download {name}` and pass the local folder instead"
    )
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo_id=name, allow_patterns=["config.json", "model.safetensors*"]
        )
    except Exception:  # offline mode, DNS, HTTP errors, missing repo: one message for the user
        raise GptkitError(hint) from None
    return Path(folder)


def exporter(model: GPT):
    """The architecture module that writes `model`: GPT-2 if it is one, else Llama/Qwen."""
    if not isinstance(model.head, LMHead):
        raise GptkitError("save_hf writes language models; this model has a task head")
    c = model.config
    if hf_gpt2.unmapped(c) is None:
        return hf_gpt2
    bad = hf_llama.unmapped(c)
    if bad is None:
        return hf_llama
    raise GptkitError(
        f"model.{bad} has no Hugging Face equivalent (GPT-2: {hf_gpt2.unmapped(c)}); export "
        "with --format safetensors, which keeps every gptkit option"
    )


def save_hf(model: GPT, out_dir: str | os.PathLike, *, eot_id: int | None = None):
    """Write `model` as an HF dir (config.json + model.safetensors), atomically: GPT-2 when it
    has GPT-2's layout, else Llama / Qwen2 / Qwen3; anything else is refused with the key."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    out = Path(out_dir)
    arch = exporter(model)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GptkitError(f"{out} already exists and is not empty; choose a new output folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise GptkitError(f"cannot create a folder beside {out} ({e.strerror})") from None
    try:
        save_file(arch.to_hf(model), tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(arch.hf_config(model, eot_id), indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (OSError, SafetensorError)):  # disk full, no permission
            reason = getattr(e, "strerror", None) or e
            raise GptkitError(
                f"could not write {out} ({reason}); free disk space or fix permissions"
            ) from None
        raise

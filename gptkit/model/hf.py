"""Hugging Face GPT-2 <-> gptkit: load a GPT2LMHeadModel/GPT2Model dir, save one back.

`load_hf("path/to/dir")` or `load_hf("hf:gpt2")` (hub download only when online) -> `GPT`;
`save_hf(model, "out/")` writes config.json + model.safetensors that
`transformers.GPT2LMHeadModel.from_pretrained` reads. HF's Conv1D stores weights as [in, out]:
the four matrices of every block are transposed on the way in and out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path

import torch

from gptkit.errors import GptkitError
from gptkit.model.gpt import GPT, Backbone, GPTConfig, LMHead

# The four Conv1D matrices per block; everything else has the same layout as nn.Linear/LayerNorm.
_CONV1D = re.compile(r"^h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
# Causal-mask buffers of transformers 4.x; a bare endswith("attn.bias") would also hit c_attn.bias.
_BUFFERS = re.compile(r"\.attn\.(masked_)?bias$")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


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
    """A GPT-2 from a local HF dir or a hub name `hf:NAME` -> our `GPT` (fp32, CPU, eval mode)."""
    path = str(path_or_name)
    folder = _download(path[3:]) if path.startswith("hf:") else Path(path)
    if not is_hf_dir(folder):
        raise GptkitError(
            f"{folder} is not a Hugging Face model dir (needs config.json and model.safetensors "
            "or pytorch_model.bin); pass a folder written by save_pretrained"
        )
    config = config_from_hf(_read_json(folder / "config.json"), where=str(folder))
    state = _read_weights(folder)
    with torch.device("meta"):
        model = GPT(config)  # no random init: every tensor is assigned from the file
    model.load_state_dict(_to_gptkit(state, config, where=str(folder)), strict=True, assign=True)
    return model.float().eval()


def config_from_hf(hf: dict, *, where: str = "config.json") -> GPTConfig:
    """Check an HF config describes plain GPT-2 and translate it to a GPTConfig."""
    if hf.get("model_type") != "gpt2":
        raise GptkitError(
            f"{where} holds a {hf.get('model_type')!r} model; only GPT-2 (model_type 'gpt2') "
            "converts to gptkit"
        )
    n_embd, n_pos = hf.get("n_embd", 768), hf.get("n_positions", 1024)
    checks = [
        ("activation_function", hf.get("activation_function", "gelu_new"),
         ("gelu_new", "gelu_pytorch_tanh")),
        ("layer_norm_epsilon", hf.get("layer_norm_epsilon", 1e-5), (1e-5,)),
        ("n_inner", hf.get("n_inner"), (None, 4 * n_embd)),
        ("n_ctx", hf.get("n_ctx", n_pos), (n_pos,)),
        ("tie_word_embeddings", hf.get("tie_word_embeddings", True), (True,)),
        ("scale_attn_weights", hf.get("scale_attn_weights", True), (True,)),
        ("scale_attn_by_inverse_layer_idx", hf.get("scale_attn_by_inverse_layer_idx", False),
         (False,)),
        ("add_cross_attention", hf.get("add_cross_attention", False), (False,)),
    ]  # fmt: skip
    for key, value, allowed in checks:
        if value not in allowed:
            raise GptkitError(
                f"{where}: {key}={value!r} is not plain GPT-2 (gptkit supports "
                f"{' or '.join(map(repr, allowed))}); convert the model another way"
            )
    try:
        return GPTConfig(
            n_layer=hf.get("n_layer", 12),
            n_head=hf.get("n_head", 12),
            n_embd=n_embd,
            block_size=n_pos,
            vocab_size=hf.get("vocab_size", 50257),
            dropout=0.0,  # inference default; fine-tuning sets its own
            bias=True,
        )
    except ValueError as e:
        raise GptkitError(
            f"{where}: invalid GPT-2 shape ({'; '.join(str(e).splitlines())})"
        ) from None


def _to_gptkit(state: dict, config: GPTConfig, *, where: str) -> dict:
    """HF GPT-2 state dict -> ours: strip `transformer.`, transpose Conv1D, pad wte rows."""
    prefixed = any(k.startswith("transformer.") for k in state)  # a model with a head
    out = {}
    for key, t in state.items():
        if prefixed and not key.startswith("transformer."):
            continue  # lm_head is tied to wte; other heads (score, ...) are not the backbone
        key = key.removeprefix("transformer.")
        if _BUFFERS.search(key):
            continue  # 4.x causal-mask buffers: SDPA masks for us
        if _CONV1D.match(key):
            t = t.t()
        if key == "wte.weight":
            t = _pad_rows(t, config.padded_vocab_size)
        out[f"transformer.{key}"] = t.contiguous()
    _check_keys(out, config, where)
    return out


def _check_keys(out: dict, config: GPTConfig, where: str):
    with torch.device("meta"):
        want = GPT(config).state_dict()
    missing = sorted(set(want) - set(out))
    extra = sorted(set(out) - set(want))
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise GptkitError(f"weights in {where} do not match GPT-2 ({what}); is the file complete?")
    for k, t in out.items():
        if t.shape != want[k].shape:
            raise GptkitError(
                f"weights in {where}: {k} has shape {tuple(t.shape)}, config.json implies "
                f"{tuple(want[k].shape)}; config.json and the weights disagree"
            )


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] >= rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], t.shape[1])])


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
        raise GptkitError(f"{path} is not a state dict of tensors; is it a GPT-2 weights file?")
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


def save_hf(model: GPT, out_dir: str | os.PathLike, *, eot_id: int | None = None):
    """Write `model` as a HF GPT-2 dir (config.json + model.safetensors), atomically."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    out = Path(out_dir)
    if isinstance(model.head, LMHead) and not model.head.tied:
        raise GptkitError("save_hf: the LM head is not tied to wte, which HF GPT-2 requires")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GptkitError(f"{out} already exists and is not empty; choose a new output folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise GptkitError(f"cannot create a folder beside {out} ({e.strerror})") from None
    try:
        save_file(_to_hf(model), tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(_hf_config(model, eot_id), indent=2) + "\n")
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


def _to_hf(model: GPT) -> dict:
    """Our backbone -> HF keys: Conv1D layout, vocab padding cropped, zero biases if bias=False."""
    out = {}
    for key, t in model.transformer.state_dict().items():
        t = t.detach().cpu()
        if _CONV1D.match(key):
            t = t.t()
        if key == "wte.weight":
            t = t[: model.config.vocab_size]
        out[f"transformer.{key}"] = t.contiguous().clone()
    with torch.device("meta"):  # HF GPT-2 always has biases; zeros compute the same function
        full = Backbone(dataclasses.replace(model.config, bias=True)).state_dict()
    dtype = model.transformer.wte.weight.dtype
    for key, t in full.items():
        out.setdefault(f"transformer.{key}", torch.zeros(t.shape, dtype=dtype))
    return out


def _hf_config(model: GPT, eot_id: int | None) -> dict:
    c = model.config
    if eot_id is None and c.vocab_size == 50257:
        eot_id = 50256  # the GPT-2 tokenizer's <|endoftext|>
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_ctx": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "tie_word_embeddings": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "dtype": str(model.transformer.wte.weight.dtype).removeprefix("torch."),
    }

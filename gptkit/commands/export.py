"""`gptkit export PATH --format hf|safetensors --out DIR`: write a model for other tools.

    gptkit export runs/demo --format hf --out exports/demo-hf         # GPT2LMHeadModel dir
    gptkit export runs/cls --format safetensors --out exports/cls     # bare weights + config
LoRA runs are exported merged. An hf dir carries tokenizer.json + tokenizer_config.json (a chat
model's tokens and template too) for AutoTokenizer; a tokenizer they cannot match is refused.
Output goes to a hidden temp dir beside --out, then is renamed; a non-empty --out is refused.
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
from gptkit.data import chat, hf_tokenizer
from gptkit.data.special import add_to_json
from gptkit.data.tokenizer import get_tokenizer
from gptkit.errors import GptkitError
from gptkit.model import hf

FORMATS = ("hf", "safetensors")
# Text an exported tokenizer.json must encode to gptkit's ids (a char tokenizer: its characters)
_PROBE = "Hello, world! It's 1234567 o'clock.\n  x = [1, 2.5]  # naïve café — 日本語 🙂\n\n\tend  "


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
    """config.json + model.safetensors for transformers, and the tokenizer files (added chat
    tokens and chat template included) that AutoTokenizer.from_pretrained(folder) reads."""
    tok = get_tokenizer(meta["tokenizer"]) if meta.get("tokenizer") else None
    text = _tokenizer_json(tok) if tok else None  # first: a refusal costs no weights write
    hf.save_hf(model, folder, eot_id=tok.eot_id if tok else None)
    (folder / "gptkit.json").write_text(json.dumps(_provenance(meta), indent=2) + "\n")
    if tok:
        _write_tokenizer(folder, text, tok, model.config.block_size)


def _tokenizer_json(tok) -> str:
    """tokenizer.json text that encodes as `tok` does, with its end-of-text (and tiktoken's other
    special tokens) and its added chat tokens as single ids; one clear error where it cannot."""
    import tokenizers

    base = getattr(tok, "base", tok)  # the tokenizer under the added chat tokens (special.py)
    probe = getattr(base, "chars", _PROBE)  # char: exactly its own characters
    want = tok.encode(probe)
    if getattr(tok, "added", None):  # a ChatML prompt: the added tokens come out as single ids
        want = chat.render_prompt(tok, [{"role": "user", "content": probe}])
        probe = tok.decode(want)
    try:
        text = add_to_json(_base_json(base), getattr(tok, "added", {}))
        got = tokenizers.Tokenizer.from_str(text).encode(probe, add_special_tokens=False).ids
    except Exception:  # noqa: BLE001 - the Rust side raises plain Exceptions (a regex, ...)
        got = None
    if got != want:
        raise GptkitError(
            f"tokenizer {tok.name} cannot be written as a Hugging Face tokenizer.json that "
            "encodes the same ids; export with --format safetensors (it keeps gptkit's spec)"
        )
    return text


def _base_json(base) -> str:
    """The tokenizer.json of a tokenizer without added tokens, its special tokens included."""
    spec, enc = base.spec(), getattr(base, "enc", None)  # enc: tiktoken's Encoding
    if spec["kind"] == "tokenizers":
        return spec["json"]
    if spec["kind"] == "char":
        text = hf_tokenizer.from_chars(base.chars)
    elif enc is not None:
        ranks = {b: enc.encode_single_token(b) for b in enc.token_byte_values()}
        text = hf_tokenizer.from_ranks(ranks, enc._pat_str)  # the regex has no public name
        return add_to_json(text, {s: enc.encode_single_token(s) for s in enc.special_tokens_set})
    else:  # byte: ids 0..255 are the bytes
        text = hf_tokenizer.from_ranks({bytes([b]): b for b in range(256)})
    return add_to_json(text, {base.decode([base.eot_id]): base.eot_id})


def _write_tokenizer(folder: Path, text: str, tok, block_size: int):
    """tokenizer.json + a tokenizer_config.json naming its special tokens and chat template, and
    for a chat model a generation_config.json that stops at the end of a turn."""
    (folder / "tokenizer.json").write_text(text, encoding="utf-8")
    spec, eot = tok.spec(), tok.decode([tok.eot_id])
    roles = {r: spec[r] for r in hf_tokenizer.ROLES if spec.get(r)} or {"bos": eot, "eos": eot}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": block_size,
        "clean_up_tokenization_spaces": False,  # decode must give back the text exactly
        **{f"{role}_token": token for role, token in roles.items()},
    }
    template = chat.jinja_template(tok)
    if template is not None:
        config["chat_template"] = template
        stops = {"bos_token_id": tok.eot_id, "eos_token_id": chat.stop_ids(tok)}
        (folder / "generation_config.json").write_text(json.dumps(stops, indent=2) + "\n")
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

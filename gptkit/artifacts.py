"""What a model path is, and how to load what it holds: the one reader of saved models.

`resolve(path)` -> `Artifact` for a gptkit run dir (its latest checkpoint), a checkpoint dir, a
`gptkit export --format safetensors` dir, a local Hugging Face dir (`gptkit export --format hf`
writes one) or `hf:NAME`. Sample, eval, export, predict and both `init_from`s load through it;
`train/checkpoint.py` only writes and resumes training checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch

from gptkit.data.tokenizer import get_tokenizer
from gptkit.errors import GptkitError
from gptkit.model import hf
from gptkit.model.gpt import GPT, GPTConfig, LMHead
from gptkit.model.heads import build_head
from gptkit.model.lora import inject, merge

# A model saved without a head spec (HF dirs, old exports) is a plain language model: this is
# the one place that default is decided.
LM_HEAD = {"name": "lm"}


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """A resolved model path: its kind, its folder and what it says about itself."""

    path: str  # as the user gave it
    kind: str  # "checkpoint" | "export" | "hf"
    dir: Path | None  # the checkpoint or export folder; None for an hf:NAME hub id
    meta: dict  # checkpoint meta.json, export config.json, HF export's gptkit.json, or {}

    @property
    def head(self) -> dict:
        return self.meta.get("head") or dict(LM_HEAD)

    @property
    def step(self) -> int | None:
        return self.meta.get("step")

    @property
    def config(self) -> dict | None:
        """The resolved config of the run that wrote it (checkpoints only)."""
        return self.meta["config"] if self.kind == "checkpoint" else None

    def tokenizer_spec(self) -> dict | None:
        """The spec of the tokenizer it was trained with; an HF dir without gptkit.json: its own
        tokenizer.json (+ tokenizer_config.json) where it has one, else gpt2."""
        spec = self.meta.get("tokenizer")
        if spec is None and self.kind == "hf":
            if self.dir is not None and (self.dir / "tokenizer.json").is_file():
                return get_tokenizer(str(self.dir / "tokenizer.json")).spec()
            return get_tokenizer("gpt2").spec()
        return spec

    def tokenizer(self):
        """The tokenizer it was trained with; an error when its metadata names none."""
        spec = self.tokenizer_spec()
        if spec is None:
            raise GptkitError(
                f"{self.path} names no tokenizer in its metadata; it cannot "
                "decode text (re-export it with 'gptkit export')"
            )
        return get_tokenizer(spec)

    def load_model(self, device="cpu") -> GPT:
        """The model in eval mode (LoRA adapters merged into plain weights)."""
        if self.kind == "hf":
            model = hf.load_hf(self.path if self.dir is None else self.dir)
        elif self.kind == "export":
            model = _model_from_export(self.dir, self.meta)
        else:
            model, _ = model_from_checkpoint(self.dir)
        return model.to(device).eval()


def resolve(path, *, what: str = "", best: bool = False) -> Artifact:
    """Find out what `path` is. `what` names the setting it came from (for messages);
    `best` picks a run's best-by-val checkpoint over its latest (what `predict` serves)."""
    text = str(path)
    if text.startswith("hf:"):
        return Artifact(path=text, kind="hf", dir=None, meta={})
    p = Path(text)
    if not p.exists():
        raise GptkitError(
            f"{what + ' ' if what else ''}{p} does not exist; pass a gptkit run or checkpoint "
            "dir (e.g. runs/demo from 'make demo'), a 'gptkit export' dir or a local HF dir"
        )
    export = _export_config(p)
    if export is not None:
        return Artifact(path=text, kind="export", dir=p, meta=export)
    if hf.is_hf_dir(p):
        sidecar = p / "gptkit.json"  # written beside an HF export by `gptkit export`
        meta = _read_json(sidecar) if sidecar.is_file() else {}
        return Artifact(path=text, kind="hf", dir=p, meta=meta)
    ckpt = find_checkpoint(p)
    if best and p.resolve() != ckpt.resolve():
        ckpt = _best_checkpoint(ckpt)
    return Artifact(path=text, kind="checkpoint", dir=ckpt, meta=read_meta(ckpt))


def load_language_model(path, *, device, dtype, use: str = "sample from"):
    """(model in eval mode on device/dtype, tokenizer) of a model that generates text; a
    fine-tuned task head or a tokenizer larger than the vocabulary is one clear error."""
    art = resolve(path)
    model = art.load_model(device).to(dtype)
    if not isinstance(model.head, LMHead):
        raise GptkitError(
            f"{path} has a {type(model.head).__name__} head, not a language model head; "
            f"{use} the pretrained run it was fine-tuned from"
        )
    tok = art.tokenizer()
    if tok.vocab_size > model.config.vocab_size:
        raise GptkitError(
            f"{path}: tokenizer {tok.name} has {tok.vocab_size} ids but the model only "
            f"{model.config.vocab_size}; its metadata names the wrong tokenizer"
        )
    return model, tok


def load_model(path, device="cpu") -> GPT:
    """A run dir, checkpoint dir, gptkit/HF export dir or hf:NAME -> model in eval mode."""
    return resolve(path).load_model(device)


# --------------------------------------------------------------------------------------------
# Checkpoint folders (written by train/checkpoint.py)


def find_checkpoint(path) -> Path:
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
    done = [p for p in root.glob("step_*") if (p / "meta.json").is_file()]
    return max(done, key=lambda p: step_number(p.name), default=None)


def step_number(name: str) -> int:
    """step_000500 -> 500 (numeric order stays right past step 999,999)."""
    digits = name[len("step_") :]
    return int(digits) if digits.isdigit() else -1


def _best_checkpoint(ckpt: Path) -> Path:
    """The run's best-by-val checkpoint that `ckpt`'s meta.json names, if it still exists."""
    best = read_meta(ckpt).get("best")
    return ckpt.parent / best if best and (ckpt.parent / best / "meta.json").is_file() else ckpt


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


def read_weights(path: Path) -> dict:
    """A safetensors file -> state dict, with a clear error when it is corrupt."""
    try:
        return safetensors.torch.load_file(path)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise GptkitError(f"{path} is not a readable safetensors file ({e}); re-save it") from None


def model_from_checkpoint(ckpt: Path) -> tuple[GPT, dict]:
    """Rebuild the model a checkpoint's meta.json describes and load its weights."""
    meta = read_meta(ckpt)
    try:
        config = GPTConfig(**meta["config"]["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise GptkitError(f"{ckpt}/meta.json has an invalid model config ({e})") from None
    model = GPT(config, head=build_head(meta.get("head") or LM_HEAD, config))
    if meta.get("lora"):  # a LoRA fine-tune: its weights hold adapters beside the frozen base
        inject(model.transformer, **meta["lora"])
    _load_state(
        model,
        read_weights(ckpt / "model.safetensors"),
        f"{ckpt}/model.safetensors",
        "its meta.json",
    )
    if meta.get("lora"):
        merge(model.transformer)  # plain Linear weights: sample, predict and export need no LoRA
    return model, meta


def _load_state(model, weights: dict, where: str, described_by: str):
    """Weights into `model`, every key and shape matching, else one line naming the file."""
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # a tensor's shape differs from the one the metadata describes
        lines = [line.strip() for line in str(e).splitlines() if "mismatch" in line]
        detail = (lines or [_first_line(e)])[0][:200]
        raise GptkitError(
            f"{where} does not match {described_by} ({detail}); the weights are "
            "from another architecture"
        ) from None
    if missing or unexpected:
        raise GptkitError(
            f"{where} does not match {described_by} (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); the weights are from another architecture"
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


# --------------------------------------------------------------------------------------------
# Export folders (written by commands/export.py)


def _export_config(p: Path) -> dict | None:
    """config.json of a `gptkit export --format safetensors` dir, else None."""
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        return None
    cfg = _read_json(cfg_path)
    return cfg if isinstance(cfg, dict) and cfg.get("format") == "gptkit" else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GptkitError(f"{path} is unreadable ({e}); re-export the model") from None


def _model_from_export(path: Path, cfg: dict) -> GPT:
    try:
        config = GPTConfig(**cfg["model"])
        model = GPT(config, head=build_head(cfg.get("head") or LM_HEAD, config))
    except (KeyError, TypeError, ValueError) as e:
        raise GptkitError(f"{path}/config.json has an invalid model config ({e})") from None
    _load_state(
        model, read_weights(path / "model.safetensors"), f"{path}/model.safetensors", "config.json"
    )
    return model

"""The run configuration: typed dataclass sections with a one-line doc under every field.

`load_config("configs/demo.yaml", ["train.lr=3e-4"])` -> `Config`. Unknown keys fail with the
closest valid key, values are coerced to their declared type, `__post_init__` checks name the
fields and the fix, and every problem is reported at once in one `ConfigError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gptkit import configfile
from gptkit.configfile import ConfigError, build, coerce, dump_yaml, to_dict  # noqa: F401
from gptkit.data.config import DataConfig
from gptkit.model.config import GPTConfig, SampleConfig  # noqa: F401 - re-exported


@dataclass(kw_only=True, slots=True)
class PrepareConfig:
    source: str = "builtin:stdlib"
    """text to tokenize: a file, folder or glob (.txt/.jsonl/.json/.csv/.parquet), hf:NAME, or builtin:NAME"""
    tokenizer: str = "gpt2"
    """gpt2 | r50k_base | p50k_base | cl100k_base | o200k_base | char | byte | bpe:N (train a byte-level BPE of N ids on the train split) | PATH to a tokenizer.json or a folder holding one"""
    out_dir: str = "data/demo"
    """folder for the token shards and meta.json"""
    val_fraction: float = 0.01
    """fraction of documents sent to the validation split (whole documents, seeded)"""
    workers: int = 0
    """tokenizer worker processes; 0 = all cores"""
    shard_tokens: int = 100_000_000
    """most tokens in one shard file"""
    text_field: str = "text"
    """column holding the text in .jsonl/.csv/.parquet and hf: sources"""
    hf_config: str | None = None
    """hf: dataset configuration name (e.g. sample-10BT)"""
    hf_split: str = "train"
    """hf: dataset split to read"""
    split_on: str | None = None
    """split each text file into documents at this separator (e.g. "\\n\\n"); null = one per file"""
    max_documents: int | None = None
    """stop after this many documents (null = all)"""
    seed: int = 1337
    """seed of the train/val document split"""

    def __post_init__(self):
        problems = []
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"`prepare.val_fraction` must be in [0, 1), got {self.val_fraction}")
        if self.workers < 0:
            problems.append(f"`prepare.workers` must be >= 0 (0 = all cores), got {self.workers}")
        if self.shard_tokens < 1:
            problems.append(f"`prepare.shard_tokens` must be >= 1, got {self.shard_tokens}")
        if self.max_documents is not None and self.max_documents < 1:
            problems.append(
                f"`prepare.max_documents` must be >= 1 (null = all), got {self.max_documents}"
            )
        n = self.tokenizer[4:] if self.tokenizer.startswith("bpe:") else "257"
        if not n.isdigit() or int(n) < 257:  # bpe:N: 256 byte symbols + <|endoftext|>
            why = ">= 257 (256 byte symbols + 1 special token)" if n.isdigit() else "an integer"
            problems.append(f"prepare.tokenizer={self.tokenizer}: N must be {why}")
        _raise_all(problems)


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    out_dir: str = "runs/demo"
    """run folder: checkpoints, config.yaml, metrics.jsonl"""
    batch_size: int = 16
    """sequences per micro-batch on each rank"""
    grad_accum: int = 1
    """micro-batches per optimizer step on each rank"""
    global_batch_size: int | None = None
    """sequences per optimizer step over all ranks (null = batch_size x grad_accum x ranks); when set, grad_accum is derived as global_batch_size / (batch_size x ranks), so a run resumed on another number of ranks keeps its global batch"""
    max_steps: int = 1000
    """optimizer steps to train for"""
    max_tokens: int | None = None
    """token budget instead of max_steps (null = use max_steps)"""
    optimizer: Literal["adamw", "muon"] = "adamw"
    """adamw | muon: torch's Muon for the 2-D matrices inside the blocks, AdamW for the rest"""
    lr: float = 1.0e-3
    """peak learning rate (with muon: Muon's; its updates match AdamW's RMS, so lr carries over)"""
    adam_lr: float | None = None
    """optimizer=muon: peak lr of the AdamW groups (embeddings, head, norms, biases); null = lr"""
    muon_momentum: float = 0.95
    """optimizer=muon: Muon's momentum after its warm-up"""
    muon_momentum_start: float = 0.85
    """optimizer=muon: Muon's momentum at step 0, raised linearly to muon_momentum"""
    muon_momentum_warmup_steps: int = 300
    """optimizer=muon: steps of that momentum ramp (0 = muon_momentum from the start)"""
    min_lr: float = 1.0e-4
    """learning rate at the end of the decay"""
    warmup_steps: int = 100
    """linear warmup steps"""
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    """learning-rate shape after warmup (wsd = warmup-stable-decay)"""
    decay_fraction: float = 0.2
    """wsd only: fraction of steps spent in the final linear decay"""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices and embeddings only"""
    beta1: float = 0.9
    """AdamW beta1"""
    beta2: float = 0.95
    """AdamW beta2"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0 = off)"""
    eval_interval: int = 200
    """evaluate every this many steps (0 = only at the end)"""
    eval_steps: int = 20
    """validation batches per evaluation (the same batches every time)"""
    log_interval: int = 10
    """log a line every this many steps"""
    ckpt_interval: int = 500
    """checkpoint every this many steps (0 = only at the end)"""
    keep_last: int = 3
    """checkpoints kept (the best by val loss is kept as well)"""
    seed: int = 1337
    """seed for weights, data order and dropout"""
    device: str = "auto"
    """auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps"""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """autocast precision; auto = bf16 where it is fast, fp16 + GradScaler on old GPUs, else fp32"""
    compile: bool = False
    """torch.compile the model (CPU: a cold compile costs ~30 s; see README Benchmarks)"""
    activation_checkpointing: Literal["none", "blocks"] = "none"
    """blocks: keep each block's input, recompute it in backward (baby GPT: 0.45× RSS, 1.35× time)"""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """multi-process strategy under torchrun"""
    init_from: str | None = None
    """start from this model's weights instead of random init: a run, checkpoint or HF GPT-2 dir
    (continued pretraining; the model shape comes from it, only model.dropout may be set)"""
    resume: str = "auto"
    """auto (continue out_dir if it has a checkpoint) | never | PATH to a checkpoint"""
    max_bad_steps: int = 5
    """stop after this many non-finite steps in a row"""
    peak_flops: float | None = None
    """peak FLOP/s for MFU (null = look up the GPU, or measure on CPU)"""

    def __post_init__(self):
        problems = []
        for name in ("batch_size", "grad_accum", "max_steps", "log_interval", "keep_last"):
            if getattr(self, name) < 1:
                problems.append(f"`train.{name}` must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_interval", "eval_steps", "ckpt_interval", "grad_clip",
                     "weight_decay", "muon_momentum_warmup_steps"):  # fmt: skip
            if getattr(self, name) < 0:
                problems.append(f"`train.{name}` must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            problems.append(f"`train.lr` must be > 0, got {self.lr}")
        if self.adam_lr is not None and (self.adam_lr <= 0 or self.optimizer != "muon"):
            problems.append("`train.adam_lr` must be > 0 and needs `train.optimizer: muon`")
        if not 0.0 <= self.muon_momentum_start <= self.muon_momentum < 1.0:
            problems.append("need 0 <= `train.muon_momentum_start` <= `train.muon_momentum` < 1")
        if not 0 <= self.min_lr <= self.lr:
            problems.append(f"`train.min_lr` ({self.min_lr}) must be in "
                            f"[0, `train.lr` ({self.lr})]")  # fmt: skip
        if self.warmup_steps > self.max_steps:
            problems.append(
                f"`train.warmup_steps` ({self.warmup_steps}) is longer than `train.max_steps` "
                f"({self.max_steps}); shorten the warmup or train longer"
            )
        if not 0.0 < self.decay_fraction <= 1.0:
            problems.append(f"`train.decay_fraction` must be in (0, 1], got {self.decay_fraction}")
        if self.max_tokens is not None and self.max_tokens < 1:
            problems.append(f"`train.max_tokens` must be >= 1, got {self.max_tokens}")
        if self.global_batch_size is not None and self.global_batch_size < 1:
            problems.append(f"`train.global_batch_size` must be >= 1, got {self.global_batch_size}")
        if self.global_batch_size is not None and self.grad_accum != 1:
            problems.append("Can't set both `train.global_batch_size` and `train.grad_accum` "
                            "(derived from it); remove train.grad_accum")  # fmt: skip
        _raise_all(problems)


@dataclass(kw_only=True, slots=True)
class LoraConfig:
    rank: int = 0
    """LoRA rank; 0 = full fine-tune (no adapters)"""
    alpha: float = 16.0
    """LoRA scaling numerator (scale = alpha / rank)"""
    dropout: float = 0.0
    """dropout on the adapter input"""
    targets: list[str] = field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])
    """names of the Linear layers that get adapters"""

    def __post_init__(self):
        problems = []
        if self.rank < 0:
            problems.append(f"`finetune.lora.rank` must be >= 0, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"`finetune.lora.dropout` must be in [0, 1), got {self.dropout}")
        _raise_all(problems)


@dataclass(kw_only=True, slots=True)
class FinetuneConfig:
    init_from: str = "runs/demo"
    """backbone: a gptkit run or checkpoint dir, or a local Hugging Face GPT-2 dir"""
    head: str = "classification"
    """lm | classification | regression | token_classification"""
    train_file: str | None = None
    """labelled training data: .jsonl/.json/.csv/.parquet or hf:NAME[:SPLIT]"""
    val_file: str | None = None
    """labelled validation data (null = a seeded split of train_file)"""
    val_fraction: float = 0.1
    """fraction of train_file held out when val_file is null"""
    text_field: str = "text"
    """input text column (lm head: plain text for continued pretraining)"""
    label_field: str = "label"
    """label column: class name/id, number(s), or per-token labels"""
    prompt_field: str | None = None
    """lm head SFT: prompt column (loss only on the completion)"""
    completion_field: str = "completion"
    """lm head SFT: completion column"""
    messages_field: str = "messages"
    """lm head chat SFT: column of {role, content} message lists (loss on assistant turns only)"""
    tokens_field: str = "tokens"
    """token_classification: column holding the list of words"""
    label_subtoken: Literal["first", "last"] = "first"
    """token_classification: label each word's first sub-token, or its last (sees the whole word)"""
    num_labels: int | None = None
    """classes (null = inferred from the training labels)"""
    num_targets: int = 1
    """regression outputs"""
    pooling: Literal["last", "mean"] = "last"
    """sequence pooling for classification/regression"""
    freeze: str = "none"
    """none | backbone | first_n_layers:N"""
    head_lr: float | None = None
    """learning rate of the head (null = train.lr)"""
    early_stopping: int = 0
    """stop after this many evaluations without a better val metric (0 = off)"""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters"""

    def __post_init__(self):
        problems = []
        if not (self.freeze in ("none", "backbone") or self.freeze.startswith("first_n_layers:")):
            problems.append(
                f"`finetune.freeze` must be none, backbone or first_n_layers:N, got {self.freeze!r}"
            )
        if self.num_labels is not None and self.num_labels < 2:
            problems.append(f"`finetune.num_labels` must be >= 2, got {self.num_labels}")
        if self.lora.rank > 0 and self.freeze != "none":
            problems.append(
                "Can't set both `finetune.lora.rank` and `finetune.freeze`: LoRA already freezes "
                "the backbone; set freeze: none"
            )
        _raise_all(problems)


@dataclass(kw_only=True, slots=True)
class WandbConfig:
    enabled: bool = False
    """log to Weights & Biases"""
    project: str = "gptkit"
    """wandb project"""
    run_name: str | None = None
    """wandb run name (null = the run folder's name)"""
    mode: Literal["online", "offline", "disabled"] = "online"
    """online needs a login; offline writes ./wandb for a later `wandb sync`"""


@dataclass(kw_only=True, slots=True)
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases sink"""


@dataclass(kw_only=True, slots=True)
class Config:
    model: GPTConfig = field(default_factory=GPTConfig)
    """model shape"""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    """`gptkit prepare`: text -> token shards"""
    data: DataConfig = field(default_factory=DataConfig)
    """pretraining data"""
    train: TrainConfig = field(default_factory=TrainConfig)
    """optimisation, evaluation, checkpoints, hardware"""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """`gptkit finetune`: backbone, head, labelled data"""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """`gptkit sample` defaults"""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """metric sinks"""


def _raise_all(problems: list[str]):
    if problems:
        raise ValueError("\n".join(problems))


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML file (optional) and `section.key=value` overrides into a validated Config."""
    return configfile.load(Config, path, overrides)


def field_docs(cls=Config, prefix: str = "") -> list[tuple[str, str, object, str]]:
    """(dotted key, type, default, one-line doc) of every leaf field of `cls`."""
    return configfile.field_docs(cls, prefix)

"""The `gptkit` command line: parse, load the config, dispatch, turn user errors into exit 2.

`gptkit <command> --help` describes each command. Config commands take `-c FILE.yaml` plus
`section.key=value` overrides; model commands take a run, checkpoint, export or HF dir. A file
argument given as `-` means stdin (inputs) or stdout (outputs); `-c` and folders refuse it.
Command modules are imported only when their command runs, so `--help` stays quick.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys

from gptkit import __version__
from gptkit.errors import GptkitError

# command -> (one-line help, module in gptkit.commands, needs a config file)
COMMANDS = {
    "prepare": ("tokenize text into memory-mapped token shards + meta.json", "prepare", True),
    "pretrain": ("train a GPT from scratch on prepared shards", "pretrain", True),
    "finetune": (
        "fine-tune a backbone with an LM/classification/regression head",
        "finetune",
        True,
    ),
    "sample": ("generate text from a run, checkpoint, export or HF dir", "sample", False),
    "chat": ("talk with a chat model (fine-tuned on messages rows) in the terminal", "chat", False),
    "eval": (
        "val loss, perplexity, bits-per-byte; or generation, multiple-choice, lm-eval benchmarks",
        "evaluate",
        False,
    ),
    "predict": ("run a fine-tuned classifier/regressor over rows of jsonl", "predict", False),
    "export": ("write a model as a Hugging Face GPT-2 dir or bare safetensors", "export", False),
    "plot": ("plot train/val loss curves of one or more runs", "plot", False),
    "serve": ("an OpenAI-compatible HTTP server and chat page for a model", "serve", False),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptkit", description="From raw text to a trained, fine-tuned GPT and its samples."
    )
    parser.error = functools.partial(_usage_error, parser)
    parser.add_argument("--version", action="version", version=f"gptkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, _, needs_config) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.error = functools.partial(_usage_error, p)
        if needs_config:
            _add_config_args(p)
        _ADD_ARGS.get(name, lambda p: None)(p)
    return parser


def _usage_error(parser: argparse.ArgumentParser, message: str):
    """argparse's usage errors as one `gptkit: error:` line and exit 2, like every user error."""
    print(f"gptkit: error: {message}; see '{parser.prog} --help'", file=sys.stderr)
    sys.exit(2)


def _add_config_args(p):
    p.add_argument(
        "-c", "--config", metavar="FILE.yaml", type=_config_file, help="run configuration (YAML)"
    )
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


# One wording per shared flag, so a flag means the same thing in every command.
_MODEL_PATH = "run, checkpoint, export or HF dir"
_DEVICE = "auto | cpu | cuda | mps (default auto)"


def _add_prepare_args(p):
    p.add_argument("--force", action="store_true", help="overwrite a finished output folder")


def _add_sampling_args(p, max_new_help: str, temperature_default: str):
    """The length and sampling flags that sample, chat and eval --generate share."""
    p.add_argument("--max-new-tokens", type=int, help=max_new_help)
    p.add_argument("--temperature", type=float, help=f"0 = greedy (default {temperature_default})")
    p.add_argument("--top-k", type=int, help="keep the k most likely tokens")
    p.add_argument("--top-p", type=float, help="nucleus sampling threshold in (0, 1]")


def _add_sample_args(p):
    p.add_argument("path", help=_MODEL_PATH)
    p.add_argument("--prompt", help="text to continue ('-' reads stdin)")
    p.add_argument("--prompt-file", help="read the prompt from this file ('-' reads stdin)")
    _add_sampling_args(p, "tokens to generate (default 200)", "0.8")
    p.add_argument("--repetition-penalty", type=float, help="> 1 discourages repeats")
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--num-samples", type=int, help="samples generated together")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", default="auto", help=_DEVICE)
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per sample instead of text"
    )


def _add_chat_args(p):
    p.add_argument("path", help="chat model: " + _MODEL_PATH)
    p.add_argument("--system", help="system prompt, kept when old turns drop out of the context")
    _add_sampling_args(p, "most tokens per reply (default 200)", "0.8")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", default="auto", help=_DEVICE)
    p.add_argument(
        "--json", action="store_true", help="one JSON object per turn (user, reply, tokens, ...)"
    )


def _add_eval_args(p):
    p.add_argument("path", help=_MODEL_PATH)
    p.add_argument("--data", type=_folder, help="prepared data dir (default: the run's data.dir)")
    p.add_argument("--split", default="val", choices=["train", "val"], help="split to score")
    p.add_argument("--max-batches", type=int, default=50, help="batches to average over")
    p.add_argument("--batch-size", type=int, default=8, help="sequences (or prompts) per batch")
    p.add_argument("--device", default="auto", help=_DEVICE)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    # Beyond loss (gptkit/evaluation/): one of three benchmark modes, each with its own flags.
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--generate",
        metavar="FILE",
        help="jsonl of prompt + reference(s) or chat messages: generate, then score "
        "BLEU, chrF, ROUGE, METEOR, exact match ('-' reads stdin)",
    )
    mode.add_argument(
        "--choices",
        metavar="FILE",
        help="jsonl of context + choices + label: multiple-choice acc, acc_norm",
    )
    mode.add_argument(
        "--tasks",
        metavar="NAMES",
        help="comma-separated lm-evaluation-harness tasks (pip install 'gptkit[eval]')",
    )
    g = p.add_argument_group("--generate")
    g.add_argument(
        "--metrics",
        help="comma-separated subset of bleu,chrf,rouge1,rouge2,rougeL,meteor,exact_match",
    )
    g.add_argument(
        "--predictions",
        metavar="OUT.jsonl",
        help="write every row with its output and per-row scores ('-': stdout)",
    )
    _add_sampling_args(g, "tokens to generate per row (default 64)", "0")
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--seed", type=int, help="random seed (default 1337)")
    t = p.add_argument_group("--tasks")
    t.add_argument("--task-dir", type=_folder, help="folder of task YAMLs (then only its tasks)")
    t.add_argument("--limit", type=float, help="rows per task (a fraction if below 1)")
    t.add_argument("--num-fewshot", type=int, help="few-shot examples per prompt")


def _add_predict_args(p):
    p.add_argument(
        "path", help="fine-tuned run or checkpoint dir (a classification/regression head)"
    )
    p.add_argument("--input", help="rows to predict (.jsonl; '-' or absent: stdin)")
    p.add_argument("--output", help="where to write predictions (.jsonl; '-' or absent: stdout)")
    p.add_argument("--device", default="auto", help=_DEVICE)


def _add_export_args(p):
    p.add_argument("path", help=_MODEL_PATH)
    p.add_argument("--format", choices=["hf", "safetensors"], default="hf", help="output format")
    p.add_argument("--out", required=True, type=_folder, help="output directory (new or empty)")


def _add_plot_args(p):
    p.add_argument("runs", nargs="+", help="run directories (each with metrics.jsonl)")
    p.add_argument(
        "--out", default="curves.png", help="figure: .png/.pdf/.svg ('-': PNG to stdout)"
    )


def _add_serve_args(p):
    p.add_argument("path", help=_MODEL_PATH)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (or $GPTKIT_API_KEY)")
    p.add_argument("--name", help="model id in the API (default: the folder name)")
    p.add_argument(
        "--max-concurrency", type=int, default=8, help="sequences decoded together (default 8)"
    )
    p.add_argument(
        "--queue-size", type=int, default=32, help="requests that may wait; more get 429"
    )
    p.add_argument("--max-tokens", type=int, default=256, help="cap on max_tokens (default 256)")
    p.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413"
    )
    p.add_argument("--device", default="auto", help=_DEVICE)
    p.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="weights' dtype (default auto)",
    )  # fmt: skip
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")


def _folder(value: str) -> str:
    """argparse type of folder arguments: '-' names a stream, which cannot hold files."""
    if value == "-":
        raise argparse.ArgumentTypeError("'-' means stdin/stdout, not a directory; pass a folder")
    return value


def _config_file(value: str) -> str:
    """argparse type of -c: a run's config is a file it can be re-run from, never stdin."""
    if value == "-":
        raise argparse.ArgumentTypeError("'-' (stdin) is not a config file; pass a YAML file")
    return value


_ADD_ARGS = {
    "prepare": _add_prepare_args,
    "sample": _add_sample_args,
    "chat": _add_chat_args,
    "eval": _add_eval_args,
    "predict": _add_predict_args,
    "export": _add_export_args,
    "plot": _add_plot_args,
    "serve": _add_serve_args,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _dispatch(args) or 0
    except GptkitError as e:
        print(f"gptkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gptkit: interrupted", file=sys.stderr)
        return 130


def _dispatch(args) -> int | None:
    _, module_name, needs_config = COMMANDS[args.command]
    if needs_config:
        from gptkit.config import dump_yaml, load_config

        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        args.cfg = cfg
    module = importlib.import_module(f"gptkit.commands.{module_name}")
    return module.run(args)


if __name__ == "__main__":
    sys.exit(main())

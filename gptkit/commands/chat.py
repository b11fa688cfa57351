"""`gptkit chat PATH`: talk with a chat model (a run, checkpoint or HF dir tuned on messages).

    gptkit chat runs/chat_dialogue --system "You are terse." --temperature 0
In a terminal the reply streams; /reset, /save FILE (the conversation as one `messages` jsonl
row), /exit; Ctrl-C stops the current reply, EOF (Ctrl-D) ends the session. With piped stdin each
line is one user turn and each reply one line (`--json`: one {"user", "reply", "tokens",
"finish_reason"} object per turn). The oldest turns, never the system prompt, drop out of the
prompt when the history outgrows the context. Templates: data/chat.py; sampling: generate.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from gptkit import artifacts
from gptkit.config import ConfigError, SampleConfig, build
from gptkit.data import chat
from gptkit.errors import GptkitError
from gptkit.model.generate import generate
from gptkit.model.gpt import LMHead
from gptkit.train import checkpoint, runtime

_FLAGS = {"max_new_tokens": "--max-new-tokens", "temperature": "--temperature",
          "top_k": "--top-k", "top_p": "--top-p", "seed": "--seed"}  # fmt: skip
_HELP = "commands: /reset (forget the conversation), /save FILE, /exit"


def run(args) -> int:
    """CLI entry: load the model, then one turn per input line until EOF or /exit."""
    cfg = _sampling(args)
    model, tok, dev = _load(args.path, args.device)
    session = Session(model, tok, dev, cfg, system=args.system)
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    _loop(session, sys.stdin, sys.stdout, tty=tty, as_json=args.json)
    return 0


def _sampling(args) -> SampleConfig:
    raw = {k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None}
    problems: list[str] = []
    cfg = build(SampleConfig, raw, "", problems, "command line")
    if problems:
        for field, flag in _FLAGS.items():
            problems = [p.replace(f"`{field}`", f"`{flag}`") for p in problems]
        raise ConfigError("; ".join(problems) + "; fix the flag (see gptkit chat --help)")
    return cfg


def _load(path, device: str):
    """(model in eval mode, tokenizer, device); one line unless PATH is a chat model."""
    dev = runtime.resolve_device(device)
    art = artifacts.resolve(path)
    tok = art.tokenizer()
    if not chat.has_chat(tok):
        raise GptkitError(
            f"{path} is not a chat model; fine-tune it on messages rows first: gptkit finetune "
            f"-c configs/chat_dialogue.yaml finetune.init_from={path} (see README 'Chat models')"
        )
    model = art.load_model(dev)
    if not isinstance(model.head, LMHead) or tok.vocab_size > model.config.vocab_size:
        raise GptkitError(f"{path} is not a language model with {tok.vocab_size} token ids; "
                          "chat with the run fine-tuned on messages rows")  # fmt: skip
    return model, tok, dev


class Session:
    """The conversation so far and how to extend it by one reply."""

    def __init__(self, model, tok, device, cfg: SampleConfig, *, system: str | None = None):
        self.model, self.tok, self.device, self.cfg = model, tok, device, cfg
        self.system = [{"role": "system", "content": system}] if system else []
        self.messages = list(self.system)
        self.stops = set(chat.stop_ids(tok))
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)

    def reset(self):
        """Forget every turn but the system prompt."""
        self.messages = list(self.system)

    def prompt(self) -> list[int]:
        """Ids of the history plus the generation prompt, oldest turns dropped until the prompt
        leaves room for a reply of min(max_new_tokens, block_size / 4) tokens (a longer reply
        slides the context window, as `sample` does)."""
        block = self.model.config.block_size
        limit = block - min(self.cfg.max_new_tokens, block // 4)
        kept = [m for m in self.messages if m["role"] != "system"]
        while True:
            ids = chat.render_prompt(self.tok, self.system + kept)
            if len(ids) <= limit or len(kept) <= 1:  # the newest message always stays
                return ids
            kept = kept[1:]

    def reply(self, user: str, write=None) -> dict:
        """Add `user`'s turn and the model's reply (streamed to `write` as it comes)."""
        self.messages.append({"role": "user", "content": user})
        idx = torch.tensor([self.prompt()], dtype=torch.long, device=self.device)
        knobs = {k: getattr(self.cfg, k) for k in ("temperature", "top_k", "top_p")}
        tokens, shown, why = [], 0, "length"
        try:
            steps = generate(self.model, idx, max_new_tokens=self.cfg.max_new_tokens,
                             generator=self.generator, **knobs)  # fmt: skip
            for column in steps:
                token = int(column[0])
                if token in self.stops:
                    why = "stop"
                    break
                tokens.append(token)
                text = self.tok.decode(tokens).rstrip("\ufffd")  # a half-decoded character waits
                if write is not None and len(text) > shown:
                    write(text[shown:])
                    shown = len(text)
        except KeyboardInterrupt:  # Ctrl-C ends this reply; the session goes on
            why = "interrupted"
        text = self.tok.decode(tokens)
        if write is not None and len(text) > shown:
            write(text[shown:])
        self.messages.append({"role": "assistant", "content": text})
        return {"user": user, "reply": text, "tokens": len(tokens) + (why == "stop"),
                "finish_reason": why}  # fmt: skip

    def save(self, path: str):
        """The conversation as one `messages` jsonl row, written atomically."""
        row = json.dumps({"messages": self.messages}, ensure_ascii=False)
        checkpoint.write_text_atomic(Path(path), row + "\n")


def _loop(session: Session, stdin, out, *, tty: bool, as_json: bool):
    """Read turns until EOF or /exit; slash commands act on the session."""
    if tty:
        print(f"gptkit chat: {_HELP}; Ctrl-C stops a reply, Ctrl-D ends", file=sys.stderr)
    while True:
        try:
            line = _read(stdin, tty)
        except KeyboardInterrupt:  # at the prompt: drop the line, keep the session
            out.write("\n")
            continue
        if line is None:
            return
        if line.startswith("/"):
            if _command(session, line) == "exit":
                return
            continue
        if not line.strip():
            continue
        stream = tty and not as_json
        if stream:
            out.write("bot> ")
        result = session.reply(line, write=_writer(out) if stream else None)
        if as_json:
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
        elif not stream:
            out.write(result["reply"] + "\n")
        else:
            out.write("\n")
        out.flush()


def _read(stdin, tty: bool) -> str | None:
    """The next input line without its newline; None at EOF."""
    if tty:
        try:
            return input("you> ")
        except EOFError:
            return None
    line = stdin.readline()
    return line.rstrip("\r\n") if line else None


def _writer(out):
    def write(text: str):
        out.write(text)
        out.flush()

    return write


def _command(session: Session, line: str) -> str | None:
    """Run a slash command; returns "exit" for /exit. Problems print, never end the session."""
    name, _, arg = line.partition(" ")
    if name in ("/exit", "/quit"):
        return "exit"
    if name == "/reset":
        session.reset()
        print("(conversation reset)", file=sys.stderr)
    elif name == "/save" and arg.strip():
        try:
            session.save(arg.strip())
            print(f"(saved to {arg.strip()})", file=sys.stderr)
        except OSError as e:
            print(f"gptkit chat: cannot write {arg.strip()} ({e.strerror or e})", file=sys.stderr)
    else:
        print(f"gptkit chat: unknown command {line!r}; {_HELP}", file=sys.stderr)
    return None

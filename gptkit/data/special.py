"""Special tokens appended after a tokenizer's vocabulary (the chat tokens of data/chat.py).

`WithSpecial(base, {"<|im_start|>": 257, "<|im_end|>": 258})` wraps any tokenizer kind (byte,
char, tiktoken, tokenizer.json): text still encodes through `base` alone, so a special token's
string typed in a text stays ordinary tokens; only code that asks for the id by name
(`data/chat.py`) ever emits one. The spec records them under "added_tokens", `tokenizer.from_spec`
rebuilds the wrapper, `add_to_json` writes them into an exported tokenizer.json. Imports nothing of
gptkit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable


class WithSpecial:
    """A tokenizer plus special tokens whose ids follow its vocabulary."""

    def __init__(self, base, added: dict[str, int]):
        assert min(added.values()) >= base.vocab_size, "added ids must follow the vocabulary"
        self.base, self.added = base, dict(added)
        self.name, self.eot_id = base.name, base.eot_id
        self.vocab_size = max(added.values()) + 1
        self._text = {i: t for t, i in added.items()}

    def encode(self, text: str) -> list[int]:
        """Ids of `text` as plain text: never a special id."""
        return self.base.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text (plain text only)."""
        return self.base.encode_batch(texts)

    def encode_docs(self, texts: list[str]):
        """What `gptkit prepare` uses: the base tokenizer's documents (plain text only)."""
        return self.base.encode_docs(texts)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, each special id written as its string."""
        pieces, run = [], []
        for i in map(int, ids):
            if i in self._text:
                pieces += [self.base.decode(run), self._text[i]]
                run = []
            else:
                run.append(i)
        return "".join(pieces) + self.base.decode(run)

    def spec(self) -> dict:
        """The base spec with the grown vocab_size and the added tokens."""
        return {**self.base.spec(), "vocab_size": self.vocab_size, "added_tokens": self.added}


def split_spec(spec: dict) -> tuple[dict, dict]:
    """(the base tokenizer's spec, the added tokens) of a spec with "added_tokens"."""
    added = {str(t): int(i) for t, i in spec["added_tokens"].items()}
    base = {k: v for k, v in spec.items() if k != "added_tokens"}
    return {**base, "vocab_size": min(added.values())}, added  # ids follow the base vocabulary


def add_to_json(text: str, added: dict[str, int]) -> str:
    """tokenizer.json `text` with `added` (string -> id) among its special added tokens, so a
    Hugging Face tokenizer reads each string in a text as that one id."""
    if not added:
        return text
    data = json.loads(text)
    kept = [t for t in data.get("added_tokens") or [] if t["content"] not in added]
    new = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True} for t, i in added.items()]  # fmt: skip
    data["added_tokens"] = sorted(kept + new, key=lambda t: t["id"])
    return json.dumps(data, ensure_ascii=False)

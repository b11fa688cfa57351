"""`tokenizer.json` tokenizers (Hugging Face's `tokenizers` library) and byte-level BPE training.

`from_path("models/x")` (a tokenizer.json, or a folder holding one and maybe tokenizer_config.json)
and `train_bpe(texts, 8192)` return a `JsonTokenizer`, whose spec embeds the whole tokenizer.json:
every meta.json, checkpoint and export carries its tokenizer, and `from_spec` rebuilds it.
`from_ranks` / `from_chars` write the tiktoken, byte and char tokenizers as tokenizer.json (export).
Special-token strings inside a text are plain text (as with tiktoken), never special ids.
Imports nothing of gptkit but gptkit.errors; `tokenizers` is imported only when used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from gptkit.errors import GptkitError

EOT_TEXT = "<|endoftext|>"
ROLES = ("bos", "eos", "pad", "unk")
BPE_MIN_VOCAB = 257  # the 256 byte symbols + <|endoftext|>
# A bare tokenizer.json does not say which token ends a document or starts one: the usual names.
EOS_NAMES = (EOT_TEXT, "</s>", "<|end_of_text|>", "<eos>")
BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>")
# The BPE trainer buffers 256 texts at a time: long documents go in pieces of at most this many
# characters (cut after a newline) so its memory stays bounded.
PIECE_CHARS = 1 << 16


class JsonTokenizer:
    """A `tokenizers.Tokenizer` behind gptkit's tokenizer interface, built from its spec."""

    def __init__(self, spec: dict):
        self._spec = spec
        self.tok = _parse(spec["json"], "the tokenizer spec")
        self.tok.encode_special_tokens = True  # "<|endoftext|>" typed in a text stays text
        self.name, self.vocab_size, self.eot_id = spec["name"], spec["vocab_size"], spec["eot_id"]

    def __reduce__(self):  # pickled as its spec (spawned worker processes)
        return JsonTokenizer, (self._spec,)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens added; lone surrogates become U+FFFD)."""
        try:
            return self.tok.encode(text, add_special_tokens=False).ids
        except TypeError:  # a lone surrogate cannot cross into Rust
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, in this thread: prepare's worker processes are the parallelism."""
        return [self.encode(t) for t in texts]

    def encode_docs(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 ids of all texts, each followed by eot; int64 token count per text)."""
        # without offsets 1.45x faster than encode (tokenizers >= 0.20; uses its thread pool)
        fast = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        try:
            parts = [e.ids + [self.eot_id] for e in fast(texts, add_special_tokens=False)]
        except TypeError:  # a lone surrogate somewhere: one at a time, as encode handles it
            parts = [self.encode(t) + [self.eot_id] for t in texts]
        counts = np.array([len(p) for p in parts], dtype=np.int64)
        flat = (i for p in parts for i in p)
        return np.fromiter(flat, dtype=np.uint32, count=int(counts.sum())), counts

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, special tokens included; invalid UTF-8 becomes U+FFFD."""
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def spec(self) -> dict:
        """JSON-able description, tokenizer.json text included, that `from_spec` rebuilds."""
        return dict(self._spec)


def from_spec(spec: dict) -> JsonTokenizer:
    """Rebuild a tokenizer from its spec, checking the embedded tokenizer.json is the one named."""
    text = spec.get("json")
    if not isinstance(text, str) or not isinstance(spec.get("eot_id"), int):
        raise GptkitError("a 'tokenizers' tokenizer spec lacks its tokenizer.json text or eot_id")
    if hashlib.sha256(text.encode()).hexdigest() != spec.get("sha256"):
        raise GptkitError(
            f"tokenizer {spec.get('name')}: the embedded tokenizer.json does not match its "
            "sha256; the metadata was edited or damaged, prepare or export it again"
        )
    return JsonTokenizer(spec)


def from_path(path) -> JsonTokenizer:
    """A tokenizer.json file, or a folder holding one (an HF model dir): its tokenizer_config.json
    beside it, where present, names the bos/eos/pad/unk tokens."""
    p = Path(path).expanduser()
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise GptkitError(
            f"{file} does not exist; give prepare.tokenizer a tokenizer.json file or a folder "
            "holding one"
        )
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:
        raise GptkitError(f"cannot read {file} ({e}); give a readable tokenizer.json") from None
    tok = _parse(text, str(file))
    roles = _config_roles(file.parent / "tokenizer_config.json")
    name = file.resolve().parent.name if file.name == "tokenizer.json" else file.stem
    spec = _spec(tok, name=name or file.stem, roles=roles, where=str(file))
    template = _chat_template(file.parent)
    if template:  # the model's own chat template: data/chat.py renders it
        spec["chat_template"] = template
    return JsonTokenizer(spec)


def _chat_template(folder: Path) -> str | None:
    """The chat template an HF dir ships: chat_template.jinja, else tokenizer_config.json's."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) and template else None


def train_bpe(texts: Iterable[str], vocab_size: int, *, progress: bool = False) -> JsonTokenizer:
    """A byte-level BPE of at most `vocab_size` ids (fewer if the texts run out of pairs) trained
    on `texts`, with <|endoftext|> reserved as id 0. Same texts and size -> same tokenizer."""
    if vocab_size < BPE_MIN_VOCAB:
        raise GptkitError(
            f"prepare.tokenizer=bpe:{vocab_size}: N must be >= {BPE_MIN_VOCAB} "
            "(256 byte symbols + 1 special token)"
        )
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    # GPT-2's layout: bytes mapped to printable characters, split by its regex, no normalizer
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    tok.post_processor = tk.processors.ByteLevel(trim_offsets=False)
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TEXT],
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen or not
        show_progress=progress,
    )
    tok.train_from_iterator(_pieces(texts), trainer)
    spec = _spec(tok, name=f"bpe:{vocab_size}", roles={"eos": EOT_TEXT}, where="bpe")
    return JsonTokenizer(spec)


def same_bpe(tok: JsonTokenizer, vocab_json: Path, merges_txt: Path) -> bool:
    """True if `tok` is the plain byte-level BPE these GPT-2-style vocab/merges files describe."""
    data = json.loads(tok.spec()["json"])
    model = data.get("model") or {}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return (
        data.get("normalizer") is None
        and (data.get("pre_tokenizer") or {}).get("type") == "ByteLevel"
        and model.get("vocab") == json.loads(vocab_json.read_text(encoding="utf-8"))
        and merges == merges_txt.read_text(encoding="utf-8").split("\n")[1:-1]
    )


def from_ranks(ranks: dict[bytes, int], pattern: str | None = None) -> str:
    """tokenizer.json text of the byte-level BPE that tiktoken-style `ranks` (token bytes -> id)
    define, as transformers converts tiktoken models: every split of a token into two tokens is
    a merge, in rank order, and a whole pre-token in the vocabulary is one id. `pattern` splits
    the text first (tiktoken's regex); None leaves it whole (the byte tokenizer)."""
    tk, char = _tokenizers(), _byte_chars()

    def text(b: bytes) -> str:
        return "".join(char[x] for x in b)

    merges = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = ranks.get(token[:i]), ranks.get(token[i:])
            if left is not None and right is not None:
                merges.append(((rank, left, right), (text(token[:i]), text(token[i:]))))
    vocab = {text(b): i for b, i in ranks.items()}
    model = tk.models.BPE(vocab, [m for _, m in sorted(merges)], ignore_merges=True)
    tok = tk.Tokenizer(model)
    byte_level = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    split = [tk.pre_tokenizers.Split(tk.Regex(pattern), behavior="isolated")] if pattern else []
    tok.pre_tokenizer = tk.pre_tokenizers.Sequence([*split, byte_level])
    tok.decoder = tk.decoders.ByteLevel()
    return tok.to_str()


def from_chars(chars: str) -> str:
    """tokenizer.json text giving the i-th of `chars` id i (gptkit's char tokenizer)."""
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE({c: i for i, c in enumerate(chars)}, [], ignore_merges=True))
    tok.decoder = tk.decoders.Fuse()  # concatenate: no spaces between the characters
    return tok.to_str()


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-in character of each byte (what ByteLevel pre-tokenizers emit)."""
    keep = {*range(33, 127), *range(161, 173), *range(174, 256)}
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _pieces(texts: Iterable[str]) -> Iterator[str]:
    """Each text, long ones cut after a newline into pieces of at most PIECE_CHARS characters."""
    for text in texts:
        start = 0
        while len(text) - start > PIECE_CHARS:
            cut = text.rfind("\n", start, start + PIECE_CHARS) + 1 or start + PIECE_CHARS
            yield text[start:cut]
            start = cut
        yield text[start:]


def _spec(tok, *, name: str, roles: dict, where: str) -> dict:
    """The spec of `tok`. Its eos token is the end-of-document id (eot); a tokenizer without
    one gets <|endoftext|> added as a special token."""
    for role, token in roles.items():
        if tok.token_to_id(token) is None:
            raise GptkitError(
                f"{where}: its {role} token {token!r} is not in the vocabulary; fix "
                "tokenizer_config.json or the tokenizer"
            )
    roles = {
        "bos": _known(tok, BOS_NAMES),
        "eos": _known(tok, EOS_NAMES),
        "pad": None,
        "unk": _known(tok, [getattr(tok.model, "unk_token", None)]),
        **roles,
    }
    if roles["eos"] is None:
        tok.add_special_tokens([EOT_TEXT])  # prepare and generation need a document separator
        roles["eos"] = EOT_TEXT
    ids = tok.get_vocab(with_added_tokens=True).values()
    if not ids:
        raise GptkitError(f"{where} has an empty vocabulary; give a trained tokenizer.json")
    text = tok.to_str()  # canonical form: the same tokenizer gives the same spec
    spec = {"kind": "tokenizers", "name": name, "vocab_size": max(ids) + 1,
            "eot_id": tok.token_to_id(roles["eos"])}  # fmt: skip
    for role in ROLES:
        spec[role] = roles[role]
        spec[f"{role}_id"] = None if roles[role] is None else tok.token_to_id(roles[role])
    added = sorted(tok.get_added_tokens_decoder().items())
    spec["special_tokens"] = {t.content: i for i, t in added if t.special}
    spec["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    spec["json"] = text
    return spec


def _known(tok, names) -> str | None:
    """The first of `names` that is a token of `tok`."""
    return next((n for n in names if n and tok.token_to_id(n) is not None), None)


def _config_roles(path: Path) -> dict:
    """The bos/eos/pad/unk strings an HF tokenizer_config.json names ({} without the file)."""
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GptkitError(f"{path} is not readable JSON ({e}); fix or remove it") from None
    if not isinstance(config, dict):
        raise GptkitError(f"{path} is not a JSON object; fix or remove it")
    roles = {}
    for role in ROLES:
        value = config.get(f"{role}_token")
        if isinstance(value, dict):  # transformers 4: {"content": ..., "__type": "AddedToken"}
            value = value.get("content")
        if isinstance(value, str) and value:
            roles[role] = value
    return roles


def _parse(text: str, where: str):
    """tokenizer.json text -> `tokenizers.Tokenizer`, or one clear error."""
    tk = _tokenizers()
    try:
        return tk.Tokenizer.from_str(text)
    except Exception as e:  # noqa: BLE001 - the Rust side raises a plain Exception
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise GptkitError(
            f"{where} is not a valid tokenizer.json ({reason}); give one saved by the "
            "tokenizers library (Tokenizer.save or save_pretrained)"
        ) from None


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise GptkitError(
            "tokenizer.json tokenizers need the 'tokenizers' package; "
            "pip install 'tokenizers>=0.19'"
        ) from None
    return tokenizers

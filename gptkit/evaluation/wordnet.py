"""WordNet for METEOR's synonym stage, found offline.

Looked up in order: `$GPTKIT_NLTK_DATA/corpora/wordnet`; nltk's own data path (`NLTK_DATA`,
~/nltk_data, ...); Debian's `wordnet-base` + `wordnet-sense-index` files in /usr/share/wordnet,
copied once into `$GPTKIT_NLTK_DATA` (default ~/.cache/gptkit/nltk_data) beside the `lexnames`
file nltk needs and Debian does not ship. With none, METEOR scores exact and stem matches only,
and the result says so (`meteor_note`).
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from pathlib import Path

from gptkit.evaluation.optional import require

DEBIAN = Path("/usr/share/wordnet")
ENV = "GPTKIT_NLTK_DATA"
# WordNet 3.0's lexicographer files in number order (lexnames(5WN)), as nltk reads them.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_POS = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}  # lexnames' third column
NO_WORDNET = (
    f"METEOR without synonyms (exact and stem matches only): no WordNet in ${ENV}, nltk's data "
    f"path or {DEBIAN}; apt-get install wordnet-base wordnet-sense-index, or set {ENV}"
)


def find():
    """(a WordNet reader, None), or (None, a note saying why METEOR runs without synonyms)."""
    own = Path(os.environ[ENV]) if os.environ.get(ENV) else None
    if own is not None and (own / "corpora" / "wordnet" / "lexnames").is_file():
        return _reader(str(own)), None
    nltk = require("nltk")
    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        pass
    else:
        from nltk.corpus import wordnet

        return wordnet, None
    if not ((DEBIAN / "data.noun").is_file() and (DEBIAN / "index.sense").is_file()):
        return None, NO_WORDNET
    dest = own or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    dest = dest / "gptkit" / "nltk_data" if own is None else dest
    try:
        assemble(dest)
    except OSError as e:
        return None, f"{NO_WORDNET} (copying {DEBIAN} into {dest} failed: {e.strerror or e})"
    return _reader(str(dest)), None


def assemble(dest: Path, source: Path = DEBIAN) -> Path:
    """Copy Debian's WordNet files into DEST/corpora/wordnet with a generated `lexnames`; a
    complete folder is left as it is. Returns that folder."""
    target = Path(dest) / "corpora" / "wordnet"
    if (target / "lexnames").is_file():
        return target
    tmp = target.with_name(f".wordnet.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in source.iterdir():  # copies: nltk >= 3.10 refuses symlinks and hard links (36 MB)
        if f.is_file():
            shutil.copyfile(f, tmp / f.name)
    lines = [f"{i:02d}\t{name}\t{_POS[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES)]
    (tmp / "lexnames").write_text("".join(lines), encoding="utf-8")
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@functools.cache
def _reader(data_dir: str):
    """A WordNetCorpusReader over DATA_DIR/corpora/wordnet (loading takes seconds: once)."""
    nltk = require("nltk")
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if data_dir not in nltk.data.path:  # nltk >= 3.10 opens corpora only under its data path
        nltk.data.path.append(data_dir)
    with warnings.catch_warnings():  # "multilingual functions are not available": not needed
        warnings.simplefilter("ignore")
        return WordNetCorpusReader(str(Path(data_dir) / "corpora" / "wordnet"), None)

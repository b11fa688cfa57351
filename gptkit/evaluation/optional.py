"""The optional `eval` extra: its libraries are imported on first use, or named in one line.

pip install 'gptkit[eval]'      # sacrebleu, rouge-score, nltk, lm-eval
"""

from __future__ import annotations

import importlib

from gptkit.errors import GptkitError

# import name -> the name pip knows it by
PACKAGES = {"sacrebleu": "sacrebleu", "rouge_score": "rouge-score", "nltk": "nltk",
            "lm_eval": "lm-eval"}  # fmt: skip


def require(module: str):
    """Import `module` (a top-level package of the eval extra) or raise a one-line GptkitError."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise GptkitError(
            f"{PACKAGES.get(top, top)} is not installed (gptkit eval's scorers are an optional "
            "extra); pip install 'gptkit[eval]'"
        ) from None

"""gptkit: from raw text to a trained, fine-tuned GPT and its samples.

Python API (imported lazily, so `import gptkit` is cheap):
`gptkit.load_model(path)`, `gptkit.get_tokenizer(name_or_spec)`, `gptkit.generate(model, idx, ...)`.
"""

__version__ = "0.1.0"

_API = {
    "load_model": "gptkit.artifacts",
    "get_tokenizer": "gptkit.data.tokenizer",
    "generate": "gptkit.model.generate",
    "load_config": "gptkit.config",
    "GptkitError": "gptkit.errors",
}
__all__ = [*_API, "__version__"]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'gptkit' has no attribute {name!r}")

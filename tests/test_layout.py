"""The import direction of DESIGN.md §1, enforced by parsing every module's imports."""

import ast
import sys
from pathlib import Path

PKG = Path(__file__).parents[1] / "gptkit"

# module prefix -> gptkit modules it may import (besides gptkit.errors, a leaf)
ALLOWED = {
    "gptkit.model": ("gptkit.model",),
    # hf_tokenizer imported only for tokenizer.json; special only for specs with added tokens
    "gptkit.data.tokenizer": ("gptkit.data.hf_tokenizer", "gptkit.data.special"),
    "gptkit.data.hf_tokenizer": (),
    "gptkit.data.special": (),
    "gptkit.data.shards": (),
    "gptkit.config": ("gptkit.model.config", "gptkit.data.config", "gptkit.configfile", "gptkit"),
    "gptkit.configfile": (),
    "gptkit.data": ("gptkit.data", "gptkit.config", "gptkit"),
    "gptkit.artifacts": ("gptkit.model", "gptkit.data", "gptkit"),
    "gptkit.train": (
        "gptkit.train",
        "gptkit.artifacts",
        "gptkit.model",
        "gptkit.data",
        "gptkit.config",
        "gptkit",
    ),
    "gptkit.evaluation": (
        "gptkit.evaluation",
        "gptkit.train",
        "gptkit.artifacts",
        "gptkit.model",
        "gptkit.data",
        "gptkit.config",
        "gptkit",
    ),
    "gptkit.serve": (
        "gptkit.serve",
        "gptkit.artifacts",
        "gptkit.model",
        "gptkit.data",
        "gptkit.train",
        "gptkit",
    ),
    # no command imports another: what two commands share lives in a lower layer
    "gptkit.commands": (
        "gptkit.serve",
        "gptkit.evaluation",
        "gptkit.train",
        "gptkit.artifacts",
        "gptkit.model",
        "gptkit.data",
        "gptkit.config",
        "gptkit",
    ),
}


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "gptkit":
            # `from gptkit import artifacts` imports the submodule gptkit.artifacts
            found |= {f"gptkit.{a.name}" if _is_module(a.name) else "gptkit" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {m for m in found if m == "gptkit" or m.startswith("gptkit.")}


def _is_module(name: str) -> bool:
    return (PKG / f"{name}.py").is_file() or (PKG / name / "__init__.py").is_file()


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PKG.parent).with_suffix("").parts)


def test_lower_layers_never_import_higher_ones():
    bad = []
    for path in PKG.rglob("*.py"):
        mod = module_name(path)
        rule = max(
            (k for k in ALLOWED if mod == k or mod.startswith(k + ".")), key=len, default=None
        )
        for imp in imports_of(path):
            if imp == "gptkit.cli" and mod != "gptkit.__main__":
                bad.append(f"{mod} imports gptkit.cli (nothing may)")
            if rule is None or imp == "gptkit.errors":
                continue
            if not any(
                imp == a or (a != "gptkit" and imp.startswith(a + ".")) for a in ALLOWED[rule]
            ):
                bad.append(f"{mod} imports {imp}")
    assert not bad, "\n".join(bad)


def test_model_files_need_only_torch():
    """The model runs anywhere torch does; hf.py may also read safetensors and hub files."""
    allowed = set(sys.stdlib_module_names) | {"torch", "gptkit", "safetensors", "huggingface_hub"}
    for path in (PKG / "model").glob("*.py"):
        tops = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                tops.add(node.module.split(".")[0])
        assert tops <= allowed, f"{path.name} imports {tops - allowed}"


def test_model_loading_lives_outside_training():
    """Loading a model for use is gptkit.artifacts; train/ only saves and resumes checkpoints,
    and the commands that use models never reach into the training loop's checkpoints."""
    loaders = {"load_model", "load_tokenizer", "model_from_checkpoint", "find_checkpoint",
               "latest_checkpoint", "read_weights", "resolve"}  # fmt: skip
    for path in (PKG / "train").glob("*.py"):
        defined = {n.name for n in ast.walk(ast.parse(path.read_text()))
                   if isinstance(n, ast.FunctionDef)}  # fmt: skip
        assert not defined & loaders, f"{path.name} defines {defined & loaders}"
    for name in ("sample", "evaluate", "export", "predict"):
        imports = imports_of(PKG / "commands" / f"{name}.py")
        assert "gptkit.artifacts" in imports, f"commands/{name}.py does not use the resolver"
        assert "gptkit.train.loop" not in imports, f"commands/{name}.py imports the train loop"


def test_sizes():
    """No module over 300 lines, no function over 50, no command file over 200."""
    long = []
    for path in PKG.rglob("*.py"):
        lines = path.read_text().count("\n")
        limit = 200 if path.parent.name == "commands" else 300
        if lines > limit:
            long.append(f"{path.relative_to(PKG)}: {lines} lines (limit {limit})")
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = n.end_lineno - n.lineno + 1
                if size > 50:
                    long.append(f"{path.relative_to(PKG)}:{n.lineno} {n.name}: {size} lines")
    assert not long, "\n".join(long)

"""The import direction of DESIGN.md §1, enforced by parsing every module's imports."""

import ast
import sys
from pathlib import Path

PKG = Path(__file__).parents[1] / "gptkit"

# module prefix -> gptkit modules it may import (besides gptkit.errors, a leaf)
ALLOWED = {
    "gptkit.model": ("gptkit.model",),
    "gptkit.data.tokenizer": (),
    "gptkit.data.shards": (),
    "gptkit.config": ("gptkit.model.gpt", "gptkit.configfile", "gptkit"),
    "gptkit.configfile": (),
    "gptkit.data": ("gptkit.data", "gptkit.config", "gptkit"),
    "gptkit.train": ("gptkit.train", "gptkit.model", "gptkit.data", "gptkit.config", "gptkit"),
    "gptkit.commands": (
        "gptkit.commands",
        "gptkit.train",
        "gptkit.model",
        "gptkit.data",
        "gptkit.config",
        "gptkit",
    ),  # fmt: skip
}


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {m for m in found if m == "gptkit" or m.startswith("gptkit.")}


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

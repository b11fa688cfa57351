"""README.md's config reference is generated: it must equal scripts/gen_config_docs.py's output."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "gen_config_docs", ROOT / "scripts/gen_config_docs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_config_reference_is_current():
    gen = _script()
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    current = gen.extract(text)
    assert current is not None, (
        f"README.md has no '{gen.START}' ... '{gen.END}' block; add the two marker lines and "
        f"{gen.FIX}"
    )
    assert current == gen.render().strip("\n"), f"README.md's config reference is stale; {gen.FIX}"


def test_render_lists_every_config_key_once():
    from gptkit.config import field_docs

    gen = _script()
    table = gen.render()
    keys = [row[0] for row in field_docs()]
    for key in keys:
        assert table.count(f"| `{key}` |") == 1, key
    assert "#### `train`" in table and "`cosine \\| linear" in table


def test_write_replaces_only_the_marked_block(tmp_path):
    gen = _script()
    doc = tmp_path / "README.md"
    doc.write_text(f"# intro\n\n{gen.START}\nSTALE-TEXT\n{gen.END}\n\nafter\n")
    assert gen.main(["--write", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# intro\n\n") and text.endswith(f"{gen.END}\n\nafter\n")
    assert gen.extract(text) == gen.render().strip("\n") and "STALE-TEXT" not in text
    (tmp_path / "none.md").write_text("no markers\n")
    assert gen.main(["--write", str(tmp_path / "none.md")]) == 2

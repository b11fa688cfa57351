"""The README cannot drift from the CLI: every `gptkit ...` command in its code blocks parses
with the real argument parser, every config it names loads with its overrides, and every
subcommand the CLI offers is documented."""

import re
import shlex
from pathlib import Path

import pytest

from gptkit.cli import COMMANDS, build_parser
from gptkit.config import load_config

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def bash_blocks() -> list[str]:
    """The contents of the README's ```bash fenced blocks."""
    blocks, current = [], None  # current: lines of an open bash block, "skip" for another kind
    for line in README.splitlines():
        if line.startswith("```"):
            if current is None:
                current = [] if line.strip() == "```bash" else "skip"
            else:
                if current != "skip":
                    blocks.append("\n".join(current))
                current = None
        elif isinstance(current, list):
            current.append(line)
    return blocks


def readme_commands() -> list[list[str]]:
    commands = []
    for block in bash_blocks():
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if "gptkit " not in line or line.startswith("#"):
                continue
            words = shlex.split(line[line.index("gptkit ") :])
            if len(words) > 1 and words[1] in COMMANDS:
                commands.append(words[1:])
    return commands


COMMANDS_IN_README = readme_commands()


def test_readme_shows_the_two_setup_commands_and_every_subcommand():
    assert "make demo" in README and "make test" in README
    shown = {c[0] for c in COMMANDS_IN_README}
    assert shown == set(COMMANDS), f"undocumented: {set(COMMANDS) - shown}"


@pytest.mark.parametrize(
    "argv", COMMANDS_IN_README, ids=[" ".join(c)[:60] for c in COMMANDS_IN_README]
)
def test_readme_command_parses_and_its_config_loads(argv, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = build_parser().parse_args(argv)  # argparse exits (SystemExit) on an unknown flag
    if getattr(args, "config", None):
        load_config(args.config, args.overrides)


def test_makefile_and_ci_run_the_readme_test_command():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:.*\n\t.*pytest tests", makefile, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()

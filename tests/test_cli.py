"""CLI: help, version, and user errors as one line with exit code 2."""

import subprocess
import sys

import pytest

from gptkit import __version__
from gptkit.cli import COMMANDS


def gptkit(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "gptkit", *args], capture_output=True, text=True, timeout=120, **kw
    )


def test_help_lists_every_command():
    r = gptkit("--help")
    assert r.returncode == 0
    for name in ("prepare", "pretrain", "finetune", "sample", *COMMANDS):
        assert name in r.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_has_help(name):
    r = gptkit(name, "--help")
    assert r.returncode == 0 and "usage: gptkit " + name in r.stdout


def test_version():
    r = gptkit("--version")
    assert r.returncode == 0 and __version__ in r.stdout


def test_bad_config_exits_2_with_one_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  lr_rate: 1\n")
    r = gptkit("pretrain", "-c", str(p))
    assert r.returncode == 2
    assert r.stderr.startswith("gptkit: error: unknown key 'train.lr_rate'")
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_print_config_shows_resolved_values(tmp_path):
    r = gptkit("pretrain", "--print-config", "train.lr=0.5")
    assert r.returncode == 0 and "lr: 0.5" in r.stdout


def test_unexpected_errors_keep_traceback():
    code = "import gptkit.cli as c; c._dispatch = lambda a: 1/0; c.main(['prepare'])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and "ZeroDivisionError" in r.stderr and "Traceback" in r.stderr

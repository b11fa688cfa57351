"""Start-up cost: the config and the prepare path never import torch (~2-3 s on a cold CPU box).

Each check runs a fresh interpreter, since this test process has torch loaded already. Measured
by hand: `gptkit prepare --help` ~0.07 s, `--print-config` ~0.15 s; no timing is asserted here.
"""

import subprocess
import sys

import pytest

HEAVY = {"torch", "datasets", "transformers", "wandb", "matplotlib"}


def _imported(*args: str) -> set[str]:
    """Top-level names of every module `python -X importtime ARGS` imported (it must exit 0)."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("import time:")]
    assert lines, "python -X importtime printed nothing"
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in lines}


@pytest.mark.parametrize(
    "module", ["gptkit", "gptkit.config", "gptkit.model.config", "gptkit.commands.prepare"]
)
def test_import_loads_no_torch(module):
    assert _imported("-c", f"import {module}") & HEAVY == set()


@pytest.mark.parametrize(
    "argv", [["prepare", "--help"], ["prepare", "--print-config", "model.n_layer=2"]]
)
def test_prepare_cli_loads_no_torch(argv):
    assert _imported("-m", "gptkit", *argv) & HEAVY == set()


def test_gpt_config_is_still_exported_by_the_model_module():
    from gptkit.model import config, gpt

    assert gpt.GPTConfig is config.GPTConfig

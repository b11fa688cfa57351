"""Checkpoint retention: the last `keep_last` checkpoints plus the best one, however old it is."""

import torch

from gptkit import artifacts
from gptkit.train import checkpoint


def test_an_old_best_survives_beside_the_last_k(tmp_path):
    weights = {"w": torch.zeros(2)}
    for step in (2, 4, 6, 8):
        checkpoint.save(tmp_path, step=step, model=weights, state={}, meta={"config": {}},
                        keep_last=2, best="step_000002")  # fmt: skip
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert names == ["step_000002", "step_000006", "step_000008"]  # step 4 pruned, best kept
    assert (tmp_path / "checkpoints/latest").read_text() == "step_000008\n"
    assert artifacts.latest_checkpoint(tmp_path) == tmp_path / "checkpoints/step_000008"
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temp or trash dirs left

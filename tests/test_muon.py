"""train.optimizer=muon: Muon owns the 2-D matrices inside the blocks and AdamW the rest; the
pair steps, checkpoints and resumes as one optimizer; 2 gloo ranks == 1 rank; loss falls."""

import pytest
import torch
from conftest import TINY
from test_pretrain import assert_resumed_exactly, losses, torchrun

from gptkit import artifacts
from gptkit.commands.pretrain import pretrain
from gptkit.config import TrainConfig, load_config
from gptkit.errors import GptkitError
from gptkit.model.gpt import GPT
from gptkit.train import checkpoint
from gptkit.train.optim import MuonAdamW, build_optimizer, muon_momentum_at, set_lr

MUON = [*TINY, "train.optimizer=muon", "train.warmup_steps=2", "train.lr=3e-3"]


def config(data_dir, run_dir, *extra):
    return load_config(None, [*MUON, f"data.dir={data_dir}", f"train.out_dir={run_dir}", *extra])


def hidden(model) -> set[str]:
    """Names Muon must own: every 2-D weight under transformer.h."""
    return {
        n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.ndim == 2
    }


def test_muon_owns_the_hidden_matrices_and_adamw_everything_else(tiny_config):
    model = GPT(tiny_config)
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=0.02, adam_lr=0.004),
                          device_type="cpu")  # fmt: skip
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert in_muon == hidden(model) and len(in_muon) == 4 * tiny_config.n_layer
    assert in_adamw == set(names.values()) - in_muon  # wte, wpe, norms, biases
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= in_adamw
    assert [g["lr_scale"] for g in opt.muon.param_groups] == [1.0]
    assert [g["lr_scale"] for g in opt.adamw.param_groups] == pytest.approx([0.2, 0.2])
    set_lr(opt, 0.01)  # the schedule reaches both: Muon at lr, AdamW at adam_lr / lr of it
    assert opt.muon.param_groups[0]["lr"] == 0.01
    assert [g["lr"] for g in opt.adamw.param_groups] == pytest.approx([0.002, 0.002])
    assert len(opt.param_groups) == 1 + len(opt.adamw.param_groups)


@pytest.mark.parametrize("frozen", ["adamw", "muon"])
def test_a_step_moves_only_the_parameters_of_the_optimizer_with_lr(tiny_config, frozen):
    torch.manual_seed(0)
    model = GPT(tiny_config)
    opt = build_optimizer(model, TrainConfig(optimizer="muon"), device_type="cpu")
    set_lr(opt, 1e-2)
    for group in getattr(opt, frozen).param_groups:
        group["lr"] = 0.0  # no update, and no decay either (decay is lr * weight_decay)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    idx = torch.randint(0, tiny_config.vocab_size, (4, tiny_config.block_size + 1))
    logits = model(idx[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    expect = hidden(model) if frozen == "adamw" else set(before) - hidden(model)
    assert moved == expect


def test_muon_momentum_warms_up_like_nanochat():
    c = TrainConfig(optimizer="muon")  # 0.85 -> 0.95 over 300 steps
    assert muon_momentum_at(0, c) == pytest.approx(0.85)
    assert muon_momentum_at(150, c) == pytest.approx(0.90)
    assert muon_momentum_at(300, c) == muon_momentum_at(10**6, c) == 0.95
    assert muon_momentum_at(0, TrainConfig(muon_momentum_warmup_steps=0)) == 0.95


def test_loss_falls_with_muon(tiny_data, tmp_path):
    run = tmp_path / "run"
    last = pretrain(config(tiny_data, run, "train.max_steps=40", "train.eval_interval=20"))
    curve = losses(run)
    assert sum(list(curve.values())[-5:]) / 5 < curve[1] - 1.0, curve
    assert last["val_loss"] < 4.5  # ln(257) = 5.55 at init


def test_resume_with_muon_matches_uninterrupted_run_exactly(tiny_data, tmp_path):
    # the momentum ramp (10 steps) crosses the resume point: its step count must come back too
    common = ["train.max_steps=16", "train.ckpt_interval=8", "train.eval_interval=8",
              "train.keep_last=5", "model.dropout=0.1", "train.muon_momentum_warmup_steps=10"]  # fmt: skip
    full, part = tmp_path / "full", tmp_path / "part"
    pretrain(config(tiny_data, full, *common))
    mid = full / "checkpoints" / "step_000008"
    saved = checkpoint.read_state(mid)["optimizer"]
    assert saved.keys() == {"muon", "adamw", "steps"} and saved["steps"] == 8
    pretrain(config(tiny_data, part, *common, f"train.resume={mid}"))
    assert_resumed_exactly(full, part)


def test_resuming_an_adamw_run_with_muon_fails_clearly(tiny_data, tiny_run):
    with pytest.raises(GptkitError, match="state.pt does not fit this run"):
        pretrain(config(tiny_data, tiny_run, "train.max_steps=4"))


DIST = ["train.max_steps=6", "train.eval_interval=3", "train.ckpt_interval=3"]


@pytest.fixture(scope="module")
def one_rank(tiny_data, tmp_path_factory):
    """The reference: one process, grad_accum 2 (the same global batch as 2 ranks x 1)."""
    run = tmp_path_factory.mktemp("one")
    pretrain(config(tiny_data, run, *DIST, "train.grad_accum=2"))
    return run


# DDP: every rank runs Muon on the same all-reduced gradients, so the runs agree like AdamW's.
# FSDP: Muon's Newton-Schulz runs in bf16 on sharded DTensors; partial sums add in another order.
@pytest.mark.parametrize("strategy, tol", [("ddp", 1e-5), ("fsdp", 1e-4)])
def test_two_gloo_ranks_equal_one_rank_under_muon(tiny_data, tmp_path, one_rank, strategy, tol):
    two = tmp_path / "two"
    args = [*MUON, *DIST, f"data.dir={tiny_data}", f"train.out_dir={two}",
            f"train.strategy={strategy}"]  # fmt: skip
    torchrun(args)
    a, b = losses(one_rank), losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert abs(a[step] - b[step]) <= tol, (step, a[step], b[step])
    saved = checkpoint.read_state(artifacts.latest_checkpoint(two))["optimizer"]
    assert saved.keys() == {"muon", "adamw", "steps"} and saved["steps"] == 6

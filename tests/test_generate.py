"""Sampling: cached decoding equals full recompute, the sliding window, filters, seeds, HF parity.

Random models get weights of std 0.3 so their next-token distributions are sharp: greedy
comparisons then never hinge on two logits that differ by float noise.
"""

import pytest
import torch

import gptkit
from gptkit.model.generate import apply_repetition_penalty, apply_top_p, generate, sample_next
from gptkit.model.gpt import GPT, GPTConfig


def _model(block_size=32, vocab_size=97, seed=0):
    torch.manual_seed(seed)
    model = GPT(
        GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=vocab_size)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def _prompt(B=3, T=5, vocab_size=97, seed=1):
    return torch.randint(0, vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def _run(model, idx, **kw):
    return torch.stack(list(generate(model, idx, **kw)), dim=1)


@torch.no_grad()
def _greedy_reference(model, idx, steps, keep=None):
    """Full forward over the window at every step; the window slides like generate's."""
    block = model.config.block_size
    keep = keep or block // 2
    seq, start = idx, max(0, idx.shape[1] - block)
    for _ in range(steps):
        tok = model(seq[:, start:])[:, -1].argmax(-1)
        seq = torch.cat([seq, tok[:, None]], dim=1)
        if seq.shape[1] - start > block:
            start = seq.shape[1] - keep
    return seq[:, idx.shape[1] :]


def test_greedy_cached_equals_full_recompute():
    model, idx = _model(), _prompt()
    out = _run(model, idx, max_new_tokens=20, temperature=0)
    assert out.shape == (3, 20)
    assert torch.equal(out, _greedy_reference(model, idx, 20))


def test_generating_past_block_size_slides():
    model, idx = _model(block_size=16), _prompt()
    out = _run(model, idx, max_new_tokens=60, temperature=0)
    assert torch.equal(out, _greedy_reference(model, idx, 60))


def test_prompt_longer_than_block_size():
    model, idx = _model(block_size=16), _prompt(T=40)
    out = _run(model, idx, max_new_tokens=10, temperature=0)
    assert torch.equal(out, _greedy_reference(model, idx, 10))


def test_top_k_1_equals_greedy():
    model, idx = _model(), _prompt()
    greedy = _run(model, idx, max_new_tokens=12, temperature=0)
    gen = torch.Generator().manual_seed(0)
    sampled = _run(model, idx, max_new_tokens=12, temperature=1.0, top_k=1, generator=gen)
    assert torch.equal(greedy, sampled)


def test_same_seed_same_tokens_different_seed_differs():
    model, idx = _model(), _prompt()

    def draw(seed):
        gen = torch.Generator().manual_seed(seed)
        return _run(model, idx, max_new_tokens=16, temperature=1.5, top_p=0.95, generator=gen)

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


def test_top_p_keeps_smallest_set_reaching_p():
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()  # sorted: 0.5, 0.3, 0.15, 0.05
    kept = {p: set(torch.isfinite(apply_top_p(logits, p))[0].nonzero()[:, 0].tolist())
            for p in (0.3, 0.7, 0.85, 0.99, 1.0)}  # fmt: skip
    assert kept == {0.3: {1}, 0.7: {1, 3}, 0.85: {0, 1, 3}, 0.99: {0, 1, 2, 3}, 1.0: {0, 1, 2, 3}}
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(logits.expand(2000, 4), top_p=0.7, generator=gen)
    assert set(draws.tolist()) == {1, 3}
    assert abs((draws == 1).float().mean().item() - 0.5 / 0.8) < 0.05  # renormalised


def test_filters_match_transformers():
    transformers = pytest.importorskip("transformers")
    g = torch.Generator().manual_seed(0)
    logits, seen = torch.randn(4, 50, generator=g) * 3, torch.randint(0, 50, (4, 7), generator=g)
    top_p = transformers.TopPLogitsWarper(0.8)(seen, logits.clone())
    assert torch.equal(torch.isfinite(apply_top_p(logits, 0.8)), torch.isfinite(top_p))
    rep = transformers.RepetitionPenaltyLogitsProcessor(1.3)(seen, logits.clone())
    assert torch.allclose(apply_repetition_penalty(logits, seen, 1.3), rep)


def test_repetition_penalty_discourages_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 1.5]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 1.5]]
    assert sample_next(logits, temperature=0, repetition_penalty=2.0, seen=torch.tensor([[0]])) == 2


def test_eot_rows_stay_finished_and_generation_stops():
    model, idx = _model(), _prompt(B=2)
    first = _run(model, idx, max_new_tokens=1, temperature=0)[:, 0]
    eot = int(first[0])
    out = _run(model, idx, max_new_tokens=30, temperature=0, eot_id=eot)
    assert (out[0] == eot).all(), "a finished row keeps yielding eot"
    ref = _greedy_reference(model, idx, out.shape[1])
    hit = (ref[1] == eot).nonzero()
    stop = int(hit[0]) + 1 if len(hit) else 30
    assert out.shape[1] == stop, "ends as soon as every row has emitted eot"
    assert torch.equal(out[1, :stop], ref[1, :stop])


def test_batch_rows_are_independent():
    model, idx = _model(), _prompt(B=3)
    batched = _run(model, idx, max_new_tokens=10, temperature=0)
    single = _run(model, idx[1:2], max_new_tokens=10, temperature=0)
    assert torch.equal(batched[1:2], single)


def test_generate_keeps_grad_mode_and_api_name():
    model, idx = _model(), _prompt(B=1)
    it = generate(model, idx, max_new_tokens=3, temperature=0)
    next(it)
    assert torch.is_grad_enabled(), "no_grad must not leak out of the generator"
    assert gptkit.generate is generate


def test_greedy_matches_transformers_generate(tmp_path):
    transformers = pytest.importorskip("transformers")
    from gptkit.model.hf import load_hf

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=64)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    hf.save_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    idx = _prompt(B=1, T=8, vocab_size=50257)
    ref = hf.generate(
        idx, attention_mask=torch.ones_like(idx), max_new_tokens=24, do_sample=False,
        pad_token_id=50256,
    )[:, 8:]  # fmt: skip
    out = _run(ours, idx, max_new_tokens=24, temperature=0)
    assert torch.equal(out[:, : ref.shape[1]], ref)
    assert ref.shape[1] == 24, "transformers stopped early; pick another seed"

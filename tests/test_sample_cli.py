"""`gptkit sample`: streaming, stop strings, seeds, JSON, HF parity, and one-line errors.

Models are random: a GPT-2-shaped HF dir (vocab 50257 so the real gpt2 tokenizer fits, 2 layers,
width 64) and a byte-level model whose random bytes exercise partial UTF-8 while streaming.
"""

import io
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from gptkit import artifacts
from gptkit.cli import main
from gptkit.commands.sample import _Completion, sample
from gptkit.config import SampleConfig
from gptkit.data.tokenizer import ByteTokenizer, get_tokenizer
from gptkit.model.gpt import GPT, GPTConfig

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=64)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # sharp distributions: greedy never hinges on float noise
        for p in model.parameters():
            p.normal_(0, 0.2)
    path = tmp_path_factory.mktemp("hf") / "gpt2-tiny"
    model.save_pretrained(path)
    return path


@pytest.fixture
def byte_model(monkeypatch):
    """Make every PATH load a random byte-level model with the given tokenizer."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=257)).eval()
    tok = ByteTokenizer()
    art = artifacts.Artifact(path="x", kind="export", dir=None, meta={})
    monkeypatch.setattr(artifacts, "resolve", lambda path, **kw: art)
    monkeypatch.setattr(artifacts.Artifact, "load_model", lambda self, device="cpu": model)
    monkeypatch.setattr(artifacts.Artifact, "tokenizer", lambda self: tok)
    return model, tok


def _sample(path, **kw):
    out = io.StringIO()
    results = sample(path, SampleConfig(**kw), out=out, as_json=kw.get("num_samples", 1) > 1)
    return results, out.getvalue()


def test_stream_never_revises_printed_text(byte_model):
    results, printed = _sample("any", prompt="héllo 中文 ", max_new_tokens=300, temperature=1.0)
    r = results[0]
    assert printed == "héllo 中文 " + r["completion"] + "\n"
    assert r["finish_reason"] in ("length", "eot")


def test_completion_holds_back_partial_utf8_and_stop_prefixes():
    row, out = _Completion(ByteTokenizer(), ["\n\n"]), io.StringIO()
    for i, b in enumerate("añ中\n".encode()):
        row.add(b, float(i))
        row.flush(out)
        assert "\ufffd" not in out.getvalue()
    assert out.getvalue() == "añ中", "a lone newline may start the stop string"
    row.add(ord("\n"), 9.0)
    row.flush(out)
    assert (row.text, row.finish_reason, out.getvalue()) == ("añ中", "stop", "añ中")


def test_greedy_matches_transformers_end_to_end(hf_dir):
    tok = get_tokenizer("gpt2")
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    prompt = "The meaning of life is"
    idx = torch.tensor([tok.encode(prompt)])
    ref = hf.generate(
        idx, attention_mask=torch.ones_like(idx), max_new_tokens=16, do_sample=False,
        pad_token_id=tok.eot_id,
    )[0, idx.shape[1] :].tolist()  # fmt: skip
    (r,), printed = _sample(hf_dir, prompt=prompt, max_new_tokens=16, temperature=0)
    ended = tok.eot_id in ref
    ref = ref[: ref.index(tok.eot_id)] if ended else ref
    assert r["completion"] == tok.decode(ref)
    assert r["finish_reason"] == ("eot" if ended else "length")
    assert printed == prompt + r["completion"] + "\n"


def test_stop_string_cuts_text_and_sets_finish_reason(hf_dir):
    (full,), _ = _sample(hf_dir, prompt="Hello", max_new_tokens=24, temperature=0)
    text = full["completion"]
    assert full["finish_reason"] == "length" and len(text) > 20
    stop = text[10:14]
    (cut,), printed = _sample(hf_dir, prompt="Hello", max_new_tokens=24, temperature=0, stop=[stop])
    assert cut["finish_reason"] == "stop"
    assert cut["completion"] == text[: text.index(stop)]
    assert printed == "Hello" + cut["completion"] + "\n"
    assert cut["tokens"] < 24


def test_eot_ends_a_sample(byte_model):
    model, tok = byte_model
    (r,), _ = _sample("any", prompt="abc", max_new_tokens=20, temperature=0)
    ids = tok.encode(r["completion"])
    pos = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])  # first new token
    tok.eot_id = ids[pos]  # pretend that token is end-of-text
    (r2,), _ = _sample("any", prompt="abc", max_new_tokens=20, temperature=0)
    assert (r2["finish_reason"], r2["tokens"]) == ("eot", pos + 1)
    assert r2["completion"] == tok.decode(ids[:pos])


def test_same_seed_same_text_and_batched_json(hf_dir):
    kw = dict(prompt="Once", max_new_tokens=12, temperature=1.0, top_k=50, num_samples=3)
    a, out = _sample(hf_dir, seed=5, **kw)
    b, _ = _sample(hf_dir, seed=5, **kw)
    c, _ = _sample(hf_dir, seed=6, **kw)
    assert [r["completion"] for r in a] == [r["completion"] for r in b]
    assert [r["completion"] for r in a] != [r["completion"] for r in c]
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines == a and len(lines) == 3
    assert set(lines[0]) == {"prompt", "completion", "tokens", "finish_reason", "tokens_per_second"}


def test_empty_prompt_starts_from_end_of_text(hf_dir):
    (r,), printed = _sample(hf_dir, prompt="", max_new_tokens=5, temperature=0)
    assert r["tokens"] >= 1 and printed == r["completion"] + "\n"


def test_prompt_from_stdin(hf_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("From stdin"))
    assert main(["sample", str(hf_dir), "--prompt", "-", "--max-new-tokens", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == "From stdin"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--top-p", "1.5"], "`--top-p` must be in (0, 1]"),
        (["--top-p", "0"], "`--top-p` must be in (0, 1]"),
        (["--temperature", "-1"], "`--temperature` must be >= 0"),
        (["--max-new-tokens", "0"], "`--max-new-tokens` must be >= 1"),
        (["--stop", ""], "`--stop` must not be empty"),
        (["--prompt", "a", "--prompt-file", "p.txt"], "both --prompt and --prompt-file"),
        (["--prompt-file", "/nonexistent/p.txt"], "cannot read --prompt-file"),
        (["--dtype", "float64"], "unknown --dtype"),
    ],
)
def test_bad_flags_exit_2_with_one_line(hf_dir, capsys, flags, expected):
    assert main(["sample", str(hf_dir), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptkit: error: ") and err.count("\n") == 1
    assert expected in err


@pytest.mark.parametrize("make", [lambda tmp: tmp / "missing", lambda tmp: tmp])
def test_bad_path_exits_2_with_one_line(tmp_path, capsys, make):
    assert main(["sample", str(make(tmp_path)), "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptkit: error: ") and err.count("\n") == 1


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "gptkit", "sample", *args], capture_output=True, text=True
    )


def test_subprocess_bad_input_has_no_traceback(tmp_path):
    proc = _cli(str(tmp_path / "missing"), "--top-p", "2")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "--top-p" in proc.stderr


def test_subprocess_json_run(hf_dir):
    proc = _cli(str(hf_dir), "--prompt", "Hi", "--max-new-tokens", "4", "--seed", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["prompt"] == "Hi" and 1 <= r["tokens"] <= 4


def test_run_uses_only_given_flags():
    from gptkit.commands.sample import config_from_args

    args = SimpleNamespace(prompt="x", prompt_file=None, max_new_tokens=7, temperature=None,
                           top_k=None, top_p=None, repetition_penalty=None, num_samples=None,
                           seed=None, stop=["\n"])  # fmt: skip
    cfg = config_from_args(args)
    assert (cfg.max_new_tokens, cfg.temperature, cfg.stop) == (
        7,
        SampleConfig().temperature,
        ["\n"],
    )

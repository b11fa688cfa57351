"""`gptkit eval RUN --choices FILE` (acc / acc_norm from summed log-likelihoods) and `--tasks`
(lm-evaluation-harness through gptkit's model adapter), which must agree on the same rows."""

import json
import math
import types

import pytest
import torch
import torch.nn.functional as F

from gptkit.cli import main
from gptkit.data.tokenizer import ByteTokenizer
from gptkit.evaluation import choices, generation
from gptkit.evaluation.lm import encode_pair, load_lm, loglikelihoods

TOK = ByteTokenizer()


class _PrefersA(torch.nn.Module):
    """Logit 2 for byte 'a' and 0 for every other id, at every position: scores are known."""

    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(block_size=32, vocab_size=257)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, idx, attention_mask=None):
        logits = torch.zeros(*idx.shape, 257)
        logits[..., ord("a")] = 2.0
        return logits


def test_acc_and_acc_norm_on_rows_with_known_answers():
    z = math.log(math.exp(2) + 256)
    la, lo = 2 - z, -z  # log p('a'), log p(any other byte)
    rows = [
        ("x", ["b", "aaaaaaa"], 0),  # sums: " b" 2*lo > " aaaaaaa" lo+7*la; per char: the a's
        ("x", ["b", "aaaaaaa"], 1),
        ("x", ["bb", "a"], 1),  # sums: " a" wins; per char: "bb" (3*lo/2 > (lo+la)/1)
        ("x", ["éé", "bbb"], 1),  # per character "bbb" wins (per byte: "éé")
    ]
    assert 2 * lo > lo + 7 * la and 3 * lo / 2 > lo + la and 5 * lo / 2 < 4 * lo / 3 < 5 * lo / 4
    result = choices.score(_PrefersA(), TOK, rows, batch_size=3)
    assert result == {"acc": 3 / 4, "acc_norm": 2 / 4, "n": 4}
    lls = loglikelihoods(_PrefersA(), [encode_pair(TOK, "x", " aaaaaaa")], batch_size=1)
    assert lls[0][0] == pytest.approx(lo + 7 * la) and lls[0][1] is False  # " " is not greedy
    assert loglikelihoods(_PrefersA(), [([1], list(b"aa"))], batch_size=1)[0][1] is True


def test_encode_pair_splits_text_as_lm_eval_does():
    from lm_eval.api.model import TemplateLM

    fake = types.SimpleNamespace(tok_encode=lambda s, **k: TOK.encode(s), backend="causal")
    for ctx, cont in [("Hello ", "world"), ("Q: 2+2?\nA:", " 4"), ("a  \n", "b"), ("é", "è")]:
        assert encode_pair(TOK, ctx, cont) == TemplateLM._encode_pair(fake, ctx, cont)
    assert encode_pair(TOK, "", "hi") == ([TOK.eot_id], list(b"hi"))  # empty context: end-of-text


def test_batched_scores_equal_one_at_a_time_and_a_plain_forward(random_lm_run):
    model, tok = load_lm(random_lm_run, "cpu")
    texts = [("def f(", "x):"), ("import", " os"), ("", "hello"), ("x = 1\n" * 9, "y = 2")]
    pairs = [encode_pair(tok, c, x) for c, x in texts]
    one = loglikelihoods(model, pairs, batch_size=1)
    four = loglikelihoods(model, pairs, batch_size=4)  # right-padded, masked
    assert [ll for ll, _ in four] == pytest.approx([ll for ll, _ in one], abs=1e-4)
    assert [g for _, g in four] == [g for _, g in one]
    ctx, cont = pairs[0]
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([ctx + cont]))[0], dim=-1)
    by_hand = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
    assert one[0][0] == pytest.approx(by_hand, abs=1e-4)
    assert len(pairs[3][0]) + len(pairs[3][1]) > 33 and math.isfinite(one[3][0])  # cropped


ROWS = [
    {"context": "def add(a, b):\n    return", "choices": ["a + b", "a - b", "None"], "label": 0},
    {"context": "import", "choices": ["os", "sys", "json"], "label": 1},
    {"context": "The café", "choices": ["éé", "bbb"], "label": 1},
    {"context": "for i in", "choices": ["range(10):", "x", "lst:"], "label": 2},
    {"context": "x =", "choices": ["1", "[]", "{}", "None"], "label": 3},
    {"context": "", "choices": ["hello", "goodbye"], "label": 0},
]
TASK = """task: gptkit_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {rows}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def test_choices_agree_with_lm_eval_on_the_same_rows(random_lm_run, tmp_path, monkeypatch,
                                                     capsys):  # fmt: skip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks/gptkit_mc.yaml").write_text(TASK.format(rows=rows, cache=tmp_path / "c"))
    run = str(random_lm_run)
    assert main(["eval", run, "--choices", str(rows), "--json", "--batch-size", "4"]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert ours["n"] == 6 and 0 < ours["acc"] < 1 and ours["acc"] != ours["acc_norm"]
    argv = ["eval", run, "--tasks", "gptkit_mc", "--task-dir", str(tmp_path / "tasks"), "--json"]
    assert main(argv) == 0
    theirs = json.loads(capsys.readouterr().out)["results"]["gptkit_mc"]
    assert theirs["acc,none"] == ours["acc"] and theirs["acc_norm,none"] == ours["acc_norm"]
    assert main([*argv[:-1], "--limit", "2"]) == 0  # lm-eval's own table
    table = capsys.readouterr().out
    assert "|gptkit_mc|" in table and "acc_norm" in table


def test_adapter_rolling_loglikelihood_and_generate_until(random_lm_run):
    from gptkit.evaluation.harness import GptkitLM

    model, tok = load_lm(random_lm_run, "cpu")
    lm = GptkitLM(model, tok, batch_size=2)
    text = "def f(x):\n    return x"
    short, long = lm.loglikelihood_rolling([_req(text), _req(text * 4)])
    with torch.no_grad():  # the text after end-of-text, in one window
        ids = [tok.eot_id, *tok.encode(text)]
        logp = F.log_softmax(model(torch.tensor([ids[:-1]]))[0], dim=-1)
    assert short == pytest.approx(sum(logp[i, t].item() for i, t in enumerate(ids[1:])), abs=1e-4)
    assert long < short < 0  # four times the text, in several block_size windows
    cfg = generation.sampling(max_new_tokens=6)
    plain = generation.complete(model, tok, [tok.encode("def "), tok.encode("x")], cfg)
    stop = plain[0][2]
    got = lm.generate_until([_req("def ", {"until": [stop], "max_gen_toks": 6}),
                             _req("x", {"until": "\x00never", "max_gen_toks": 6})])  # fmt: skip
    assert got == [plain[0][: plain[0].index(stop)], plain[1]]


def _req(*args):
    return types.SimpleNamespace(args=args if len(args) > 1 else (args[0],))

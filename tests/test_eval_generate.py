"""`gptkit eval RUN --generate FILE`: batched generation, and every score equal to its library's
own on the same predictions (sacrebleu, rouge-score, nltk METEOR with and without WordNet)."""

import json
import sys
import types

import pytest

from gptkit.cli import main
from gptkit.errors import GptkitError
from gptkit.evaluation import generation, metrics, wordnet

sacrebleu = pytest.importorskip("sacrebleu")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
meteor_score = pytest.importorskip("nltk.translate.meteor_score").meteor_score

ROWS = [
    {"prompt": "Q: where is the cat?\nA:", "reference": "the cat sat on the mat"},
    {"prompt": "Q: who shut it?\nA:", "references": ["he closed the door fast", "he shut it"]},
    {"prompt": "Q: capital?\nA:", "reference": "Paris"},
    {"messages": [{"role": "user", "content": "Say hello"},
                  {"role": "assistant", "content": "hello there, friend"}]},
]  # fmt: skip
# what a model "generates" for ROWS in the parity test (generation itself is replaced)
OUTPUTS = ["the cat was sitting on the mat", "he shut the door quickly", "Paris", "hi friend"]
REFS = [["the cat sat on the mat"], ["he closed the door fast", "he shut it"], ["Paris"],
        ["hello there, friend"]]  # fmt: skip
NO_DEBIAN = "Debian's wordnet-base + wordnet-sense-index are not installed (/usr/share/wordnet)"


@pytest.fixture(scope="module")
def wordnet_dir(tmp_path_factory):
    """An nltk data folder with WordNet 3.0 assembled from Debian's packages, or None."""
    if not (wordnet.DEBIAN / "index.sense").is_file():
        return None
    root = tmp_path_factory.mktemp("nltk_data")
    wordnet.assemble(root)
    return root


@pytest.fixture(autouse=True)
def _nltk_data(wordnet_dir, tmp_path, monkeypatch):
    """Every test finds WordNet in the assembled folder (never copies into ~/.cache)."""
    monkeypatch.setenv(wordnet.ENV, str(wordnet_dir or tmp_path / "empty"))


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _reference_meteor(wordnet_dir):
    """nltk's meteor_score as a caller would set it up by hand (WordNet from that folder)."""
    if wordnet_dir is None:
        return lambda refs, hyp: meteor_score(refs, hyp, wordnet=metrics._NoSynonyms())
    wn = wordnet._reader(str(wordnet_dir))  # nltk's WordNetCorpusReader (loading it takes ~5 s)
    assert type(wn).__name__ == "WordNetCorpusReader" and wn.get_version() == "3.0"
    return lambda refs, hyp: meteor_score(refs, hyp, wordnet=wn)


def test_scores_equal_the_libraries_own(shared_tiny_run, wordnet_dir, tmp_path, monkeypatch,
                                        capsys):  # fmt: skip
    monkeypatch.setattr(generation, "complete", lambda *a, **k: list(OUTPUTS))
    rows, out = _write(tmp_path / "rows.jsonl", ROWS), tmp_path / "pred.jsonl"
    argv = ["eval", str(shared_tiny_run), "--generate", rows, "--predictions", str(out)]
    assert main([*argv, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    expected_keys = {*metrics.METRICS, "n"} | ({"meteor_note"} if wordnet_dir is None else set())
    assert set(got) == expected_keys and got["n"] == 4
    streams = [[r[0] for r in REFS], [r[1] if len(r) > 1 else None for r in REFS]]
    assert got["bleu"] == sacrebleu.corpus_bleu(OUTPUTS, streams).score > 0
    assert got["chrf"] == sacrebleu.corpus_chrf(OUTPUTS, streams).score > 0
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    by_row = [scorer.score_multi(r, o) for o, r in zip(OUTPUTS, REFS, strict=True)]
    for key in ("rouge1", "rouge2", "rougeL"):
        assert got[key] == pytest.approx(sum(s[key].fmeasure for s in by_row) / 4, abs=1e-12)
    meteor = _reference_meteor(wordnet_dir)
    rows_meteor = [
        meteor([x.split() for x in r], o.split()) for o, r in zip(OUTPUTS, REFS, strict=True)
    ]
    assert got["meteor"] == pytest.approx(sum(rows_meteor) / 4, abs=1e-12)
    assert got["exact_match"] == 0.25  # "Paris"
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["output"] for w in written] == OUTPUTS
    assert written[3]["messages"] == ROWS[3]["messages"]  # each row as it was, plus its output
    assert written[1]["scores"]["bleu"] == sacrebleu.sentence_bleu(OUTPUTS[1], REFS[1]).score
    assert written[1]["scores"]["meteor"] == pytest.approx(rows_meteor[1], abs=1e-12)
    assert [w["scores"]["exact_match"] for w in written] == [0.0, 0.0, 1.0, 0.0]
    assert main([*argv, "--metrics", "rougeL,bleu", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"bleu", "rougeL", "n"}
    assert set(json.loads(out.read_text().splitlines()[0])["scores"]) == {"bleu", "rougeL"}
    assert main([*argv, "--metrics", "exact_match"]) == 0  # the table
    table = capsys.readouterr().out
    assert "exact_match" in table and "0.2500" in table and "bleu" not in table


def test_meteor_uses_wordnet_synonyms(wordnet_dir):
    if wordnet_dir is None:
        pytest.skip(f"METEOR synonyms not checked: {NO_DEBIAN}")
    hyp, ref = "the cat was sitting on the mat", "the cat sat on the mat"
    corpus, rows, note = metrics.score([hyp], [[ref]], ("meteor",))
    assert note is None and corpus["meteor"] == pytest.approx(0.79344, abs=1e-5)  # NOTES.md
    # "rug" and "carpet" share a synset: only WordNet matches them
    with_wn, _, _ = metrics.score(["the cat is on the rug"], [["the cat is on the carpet"]])
    ref, hyp = "the cat is on the carpet".split(), "the cat is on the rug".split()
    plain = meteor_score([ref], hyp, wordnet=metrics._NoSynonyms())
    assert with_wn["meteor"] == pytest.approx(0.99769, abs=1e-5) and plain == pytest.approx(0.83)


def test_meteor_without_wordnet_says_so(shared_tiny_run, tmp_path, monkeypatch, capsys):
    import nltk

    monkeypatch.setenv(wordnet.ENV, str(tmp_path / "empty"))  # no WordNet in $GPTKIT_NLTK_DATA,
    monkeypatch.setattr(nltk.data, "path", [])  # nor on nltk's own data path
    monkeypatch.setattr(wordnet, "DEBIAN", tmp_path / "no-debian")
    monkeypatch.delenv("NLTK_DATA", raising=False)
    hyp, refs = "the cat is on the rug", ["the cat is on the carpet"]
    corpus, _, note = metrics.score([hyp], [refs], ("meteor", "bleu"))
    assert note == wordnet.NO_WORDNET and "exact and stem matches only" in note
    assert corpus["meteor"] == meteor_score([refs[0].split()], hyp.split(),
                                            wordnet=metrics._NoSynonyms())  # fmt: skip
    monkeypatch.setattr(generation, "complete", lambda *a, **k: [hyp])
    rows = _write(tmp_path / "r.jsonl", [{"prompt": "x", "reference": refs[0]}])
    assert main(["eval", str(shared_tiny_run), "--generate", rows, "--metrics", "meteor"]) == 0
    assert f"note: {wordnet.NO_WORDNET}" in capsys.readouterr().out
    assert main(["eval", str(shared_tiny_run), "--generate", rows, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["meteor_note"] == wordnet.NO_WORDNET


def test_real_generation_is_batched_left_padded_and_stops(random_lm_run, tmp_path, capsys):
    prompts = ("def ", "import os\nimport sys\n", "    ", "class Foo:\n  def ")  # ragged
    path = _write(tmp_path / "rows.jsonl", [{"prompt": p, "reference": "x"} for p in prompts])

    def outputs(*flags):
        pred = tmp_path / "pred.jsonl"
        argv = ["eval", str(random_lm_run), "--generate", path, "--max-new-tokens", "8",
                "--metrics", "exact_match", "--predictions", str(pred), *flags]  # fmt: skip
        assert main(argv) == 0
        return [json.loads(line)["output"] for line in pred.read_text().splitlines()]

    alone = outputs("--batch-size", "1")
    # in one left-padded batch every row decodes as it does alone (prompt + 8 < block_size)
    assert outputs("--batch-size", "4") == alone and len(set(alone)) == 4
    stop = alone[3][-1]  # a character of the last output
    stopped = outputs("--stop", stop, "--stop", "never")
    assert stopped == [o[: o.index(stop)] if stop in o else o for o in alone]
    assert stopped[3] != alone[3]
    capsys.readouterr()


def test_chat_rows_prompt_with_the_chat_module_or_joined_turns(shared_tiny_run, tmp_path,
                                                              monkeypatch):  # fmt: skip
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def "},
             {"role": "assistant", "content": "main"}]  # fmt: skip
    seen = {}

    def complete(model, tok, prompts, cfg, *, batch_size, end_ids):
        seen.update(prompts=prompts, end_ids=end_ids)
        return [""] * len(prompts)

    monkeypatch.setattr(generation, "complete", complete)
    rows = _write(tmp_path / "c.jsonl", [{"messages": turns}])
    argv = ["eval", str(shared_tiny_run), "--generate", rows, "--metrics", "exact_match"]
    assert main(argv) == 0  # a byte tokenizer has no chat tokens: the turns joined by newlines
    assert seen["prompts"] == [list(b"Be brief.\ndef \n")] and seen["end_ids"] == [256]

    def render(tok, messages):
        assert messages == turns[:2]  # the turns before the reference
        return [1, 2, 3]

    chat = types.SimpleNamespace(render_prompt=render, stop_ids=lambda tok: [7, 256])
    monkeypatch.setattr(generation, "_chat", lambda tok: chat)  # a tokenizer with a template
    assert main(argv) == 0
    assert seen["prompts"] == [[1, 2, 3]] and seen["end_ids"] == [7, 256]


def test_a_missing_library_names_the_extra(shared_tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # import sacrebleu -> ImportError
    rows = _write(tmp_path / "r.jsonl", ROWS[:1])
    assert main(["eval", str(shared_tiny_run), "--generate", rows, "--metrics", "chrf"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("gptkit: error: sacrebleu is not installed (gptkit eval's scorers are an "
                   "optional extra); pip install 'gptkit[eval]'")  # fmt: skip
    assert main(["eval", str(shared_tiny_run), "--generate", rows, "--metrics", "rouge1"]) == 0


def test_flag_and_row_checks():
    with pytest.raises(GptkitError, match="unknown metric 'rogue1'.*did you mean 'rouge1'"):
        metrics.parse_metrics("bleu,rogue1")
    assert metrics.parse_metrics(" meteor , bleu ") == ("bleu", "meteor")
    with pytest.raises(GptkitError, match="`--top-p` must be in"):
        generation.sampling(top_p=1.5)
    assert generation.sampling().temperature == 0 and generation.sampling().max_new_tokens == 64
    assert main(["eval", "runs/x", "--metrics", "bleu"]) == 2  # --metrics without --generate

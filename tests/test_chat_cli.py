"""`gptkit chat`: scripted over stdin, deterministic at temperature 0, history and commands."""

import importlib.util
import io
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import TINY, TINY_RUN

from gptkit import artifacts, cli
from gptkit.commands.chat import Session
from gptkit.commands.finetune import finetune
from gptkit.config import SampleConfig, load_config
from gptkit.data import chat
from gptkit.data.tokenizer import ByteTokenizer, get_tokenizer
from gptkit.model.gpt import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("Tavo", "Rina")  # the dialogue recipe's names: consonant-vowel syllables
ROWS = [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "x?"},
     {"role": "assistant", "content": "ok"}],
]  # fmt: skip


@pytest.fixture(scope="module")
def chat_run(shared_tiny_run, tmp_path_factory):
    """The shared tiny run fine-tuned for 3 steps on messages rows (byte tokens + ChatML)."""
    root = tmp_path_factory.mktemp("chat")
    (root / "rows.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in ROWS * 8))
    finetune(load_config(None, [*TINY, "finetune.head=lm", f"finetune.init_from={shared_tiny_run}",
                                f"finetune.train_file={root}/rows.jsonl", "train.max_steps=3",
                                "train.warmup_steps=0", "train.eval_interval=0",
                                f"train.out_dir={root}/run"]))  # fmt: skip
    return root / "run"


def _chat(run, stdin: str, monkeypatch, capsys, *flags) -> list[str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    argv = ["chat", str(run), "--temperature", "0", "--max-new-tokens", "6", "--device", "cpu"]
    assert cli.main([*argv, *flags]) == 0
    return capsys.readouterr().out.splitlines()


def test_a_messages_finetune_adds_the_chat_tokens_to_run_and_model(chat_run):
    art = artifacts.resolve(chat_run)
    spec = art.tokenizer_spec()
    assert spec["added_tokens"] == {chat.IM_START: 257, chat.IM_END: 258}
    assert art.config["model"]["vocab_size"] == 259 and art.head == {"name": "lm"}
    assert art.load_model().transformer.wte.weight.shape[0] == 320


def test_three_scripted_turns_at_temperature_0_are_deterministic(chat_run, monkeypatch, capsys):
    turns = "hi\nx?\nbye\n"
    first = _chat(chat_run, turns, monkeypatch, capsys, "--json")
    assert first == _chat(chat_run, turns, monkeypatch, capsys, "--json")
    records = [json.loads(line) for line in first]
    assert [r["user"] for r in records] == ["hi", "x?", "bye"]
    for r in records:
        assert r["finish_reason"] in ("stop", "length") and 1 <= r["tokens"] <= 6
    # a real process on a pipe prints the same turns
    proc = subprocess.run(
        [sys.executable, "-m", "gptkit", "chat", str(chat_run), "--temperature", "0",
         "--max-new-tokens", "6", "--device", "cpu", "--json"],
        input=turns, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.splitlines() == first, proc.stderr


def test_save_reset_and_exit(chat_run, tmp_path, monkeypatch, capsys):
    saved = tmp_path / "conv.jsonl"
    lines = _chat(chat_run, f"hi\n/save {saved}\n/reset\nhi\n/exit\nnever read\n",
                  monkeypatch, capsys, "--system", "S")  # fmt: skip
    assert len(lines) == 2 and lines[0] == lines[1]  # after /reset the same context again
    (row,) = [json.loads(line) for line in saved.read_text().splitlines()]
    roles = [m["role"] for m in row["messages"]]
    assert roles == ["system", "user", "assistant"] and row["messages"][2]["content"] == lines[0]
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, nothing left behind


def test_old_turns_drop_out_of_the_prompt_but_never_the_system_prompt():
    tok = get_tokenizer(chat.with_chat_tokens(ByteTokenizer().spec()))
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=128, vocab_size=259))
    session = Session(model, tok, "cpu", SampleConfig(max_new_tokens=16), system="Sys")
    for i in range(8):
        session.messages += [{"role": "user", "content": f"question {i}"},
                             {"role": "assistant", "content": f"answer {i}"}]  # fmt: skip
    session.messages.append({"role": "user", "content": "last"})
    ids = session.prompt()
    text = tok.decode(ids)
    assert len(ids) <= 128 - 16 and len(session.messages) == 18  # the history itself is kept
    assert text.startswith("<|im_start|>system\nSys<|im_end|>\n")
    assert text.endswith("<|im_start|>user\nlast<|im_end|>\n<|im_start|>assistant\n")
    assert "question 7" in text and "question 0" not in text


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_number_words_in_english_and_french():
    data = _script("make_chat_data")
    cases = {0: ("zero", "zéro"), 21: ("twenty-one", "vingt et un"), 71: ("seventy-one",
             "soixante et onze"), 80: ("eighty", "quatre-vingts"), 99: ("ninety-nine",
             "quatre-vingt-dix-neuf"), 200: ("two hundred", "deux cents"), 342: (
             "three hundred forty-two", "trois cent quarante-deux")}  # fmt: skip
    assert {n: (data.english(n), data.french(n)) for n in cases} == cases


@pytest.fixture(scope="module")
def run_128(tiny_data, tmp_path_factory):
    """A 2-step tiny run with a 128-token context: the recipes' rows need more than 32."""
    from gptkit.commands.pretrain import pretrain

    run = tmp_path_factory.mktemp("run128") / "run"
    pretrain(load_config(None, [*TINY_RUN, "model.block_size=128", f"data.dir={tiny_data}",
                                f"train.out_dir={run}"]))  # fmt: skip
    return run


@pytest.mark.parametrize("recipe", ["translation", "extraction", "dialogue"])
def test_recipe_runs_small(recipe, run_128, tmp_path):
    """Each recipe end to end at toy scale: its data, its preset (2 steps), its score."""
    train, val = _script("make_chat_data").write(recipe, tmp_path, n_val=4)
    finetune(load_config(os.path.join(ROOT, f"configs/chat_{recipe}.yaml"), [
        *TINY, "model.block_size=128", f"finetune.init_from={run_128}",
        f"finetune.train_file={train}", f"finetune.val_file={val}", "train.max_steps=2",
        "train.warmup_steps=0", "train.eval_interval=0", f"train.out_dir={tmp_path}/run"]))  # fmt: skip
    rows = [json.loads(line) for line in val.read_text().splitlines()][:2]
    result = _script("score_chat").score(str(tmp_path / "run"), rows, max_new_tokens=4)
    assert result["rows"] == 2 and 0.0 <= result["exact_match"] <= 1.0
    if recipe == "extraction":
        assert set(result) >= {"name_match", "date_match", "city_match", "amount_match"}


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_extraction_tags_spell_the_chat_rows_sentence_and_fields(tmp_path):
    """extraction_tokens is extraction's rows as BIO tags: for every train and val row, the words
    rejoined are the chat row's sentence, and the tagged spans are its JSON answer exactly."""
    data, tags = _script("make_chat_data"), _script("score_tokens")
    for recipe in ("extraction", "extraction_tokens"):
        data.write(recipe, tmp_path)
    bio = {"O"} | {f"{p}-{f}" for p in "BI" for f in ("NAME", "DATE", "CITY", "AMOUNT")}
    for split in ("train", "val"):
        chats = _rows(tmp_path / f"extraction_{split}.jsonl")
        rows = _rows(tmp_path / f"extraction_tokens_{split}.jsonl")
        assert len(rows) == len(chats) == {"train": 1500, "val": 100}[split]
        for messages, row in zip(chats, rows, strict=True):
            user, answer = messages["messages"]
            assert len(row["tokens"]) == len(row["labels"]) and set(row["labels"]) <= bio
            assert re.sub(r" ([.,:])", r"\1", " ".join(row["tokens"])) == user["content"]
            assert len(tags.spans(row["labels"])) == 4  # one span per field, nothing else
            assert tags.fields(row["tokens"], row["labels"]) == json.loads(answer["content"])


def test_entity_f1_counts_exact_spans_and_fields_their_first_span():
    tags = _script("score_tokens")
    assert tags.spans(["B-NAME", "I-NAME", "O", "I-CITY", "B-CITY", None]) == [
        ("NAME", 0, 2), ("CITY", 3, 4), ("CITY", 4, 5)]  # fmt: skip
    row = {"tokens": ["Bo", "paid", "3", "in", "Oslo"],
           "labels": ["B-NAME", "O", "B-AMOUNT", "O", "B-CITY"],
           "label": ["B-NAME", "O", "B-AMOUNT", "B-CITY", "I-CITY"]}  # fmt: skip
    result = tags.score([row, {**row, "label": row["labels"]}])
    assert result["entity_f1"] == round(5 / 6, 4) and result["city_f1"] == 0.5
    assert (result["name_match"], result["city_match"], result["exact_match"]) == (1, 0.5, 0.5)


def test_extraction_tokens_recipe_runs_small(run_128, tmp_path):
    """The token-classification side at toy scale: its data, preset (2 steps), predict, score."""
    train, val = _script("make_chat_data").write("extraction_tokens", tmp_path, n_val=4)
    finetune(load_config(os.path.join(ROOT, "configs/extraction_tokens.yaml"), [
        *TINY, "model.block_size=128", f"finetune.init_from={run_128}",
        f"finetune.train_file={train}", f"finetune.val_file={val}", "train.max_steps=2",
        "train.warmup_steps=0", "train.eval_interval=0", f"train.out_dir={tmp_path}/run",
    ]))  # fmt: skip
    preds = tmp_path / "preds.jsonl"
    argv = ["predict", str(tmp_path / "run"), "--input", str(val), "--output", str(preds)]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    result = _script("score_tokens").score(_rows(preds))
    assert result["rows"] == 4
    for key in ("entity_f1", "exact_match", "name_match", "date_match", "city_match",
                "amount_match"):  # fmt: skip
        assert 0.0 <= result[key] <= 1.0, (key, result)


@pytest.fixture(scope="module")
def dialogue_run(run_128, tmp_path_factory):
    """The dialogue recipe (configs/chat_dialogue.yaml, make_chat_data's rows) at toy scale: 200
    rows over two names, 300 steps (~7 s). It answers "my name?" from the first turn for these
    seen names; unseen names need the full recipe (1,500 rows, 500 steps on runs/demo)."""
    import random

    data, rng, root = _script("make_chat_data"), random.Random(0), tmp_path_factory.mktemp("dlg")
    rows = []
    for _ in range(200):  # the rows of make_chat_data.dialogue(), names from a pool of two
        name, a, b = rng.choice(NAMES), rng.randint(1, 9), rng.randint(1, 9)
        turns = (f"I am {name}.", f"Hi {name}."), (f"{a}+{b}?", str(a + b)), ("my name?", name)
        rows.append(data._turns(*turns))
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    finetune(load_config(os.path.join(ROOT, "configs/chat_dialogue.yaml"), [
        *TINY, "model.block_size=128", f"finetune.init_from={run_128}", "finetune.val_file=null",
        f"finetune.train_file={root}/rows.jsonl", "train.max_steps=300", "train.eval_interval=0",
        "train.log_interval=100", f"train.out_dir={root}/run"]))  # fmt: skip
    return root / "run"


def test_the_third_reply_depends_on_the_first_turn(dialogue_run, monkeypatch, capsys):
    def talk(name: str, between: str = "") -> list[str]:
        script = f"I am {name}.\n3+4?\n{between}my name?\n"
        return _chat(dialogue_run, script, monkeypatch, capsys, "--max-new-tokens", "12")

    tavo = talk(NAMES[0])
    assert tavo == talk(NAMES[0])  # temperature 0: the same turns give the same replies
    rina = talk(NAMES[1])
    assert (tavo[0], tavo[2], rina[0], rina[2]) == ("Hi Tavo.", "Tavo", "Hi Rina.", "Rina")
    # /reset drops the history: the answer no longer depends on the first turn
    assert talk(NAMES[0], "/reset\n")[-1] == talk(NAMES[1], "/reset\n")[-1]


def test_ctrl_c_stops_the_reply_not_the_session(monkeypatch):
    import torch

    from gptkit.commands import chat as chat_command

    def interrupted(model, idx, **knobs):
        yield torch.tensor([ord("h")])
        raise KeyboardInterrupt

    tok = get_tokenizer(chat.with_chat_tokens(ByteTokenizer().spec()))
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=259)).eval()
    session = Session(model, tok, "cpu", SampleConfig(max_new_tokens=4, temperature=0))
    monkeypatch.setattr(chat_command, "generate", interrupted)
    result = session.reply("hi")
    assert (result["reply"], result["finish_reason"]) == ("h", "interrupted")
    monkeypatch.undo()
    assert session.reply("again")["finish_reason"] in ("stop", "length")
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * 2

"""Config loading: strict keys with suggestions, type coercion, all problems at once, presets."""

from pathlib import Path

import pytest

from gptkit.config import Config, ConfigError, dump_yaml, field_docs, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides_apply(tmp_path):
    p = write(tmp_path, "train:\n  lr: 3e-4\nmodel:\n  n_layer: 2\n")
    cfg = load_config(p, ["train.batch_size=4", "model.dropout=0.1", "train.compile=true"])
    assert cfg.train.lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string: coerced
    assert cfg.model.n_layer == 2 and cfg.train.batch_size == 4
    assert cfg.model.dropout == 0.1 and cfg.train.compile is True
    assert cfg.train.max_steps == Config().train.max_steps


def test_misspelled_key_names_key_file_and_suggestion(tmp_path):
    p = write(tmp_path, "train:\n  lr_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "train.lr_rate" in msg and str(p) in msg and "did you mean 'train.lr'" in msg


def test_unknown_section_suggests(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_config(write(tmp_path, "trian:\n  lr: 0.1\n"))


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.max_steps=abc", "expected an integer"),
        ("train.max_steps=1.5", "expected an integer"),
        ("train.lr=fast", "expected a number"),
        ("train.compile=maybe", "expected true or false"),
        ("train.schedule=cosin", "must be one of cosine"),
        ("model.n_head=5", "divisible by `model.n_head`"),
        ("train.lr=-1", "`train.lr` must be > 0"),
    ],
)
def test_wrong_types_and_ranges_fail(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        load_config(None, [override])


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lr_rate=1", "model.n_embd=100", "train.max_steps=x"])
    msg = str(e.value)
    assert msg.startswith("3 problems")
    assert "lr_rate" in msg and "n_embd" in msg and "max_steps" in msg


def test_cross_field_rule_names_both_fields():
    with pytest.raises(ConfigError, match="warmup_steps.*max_steps"):
        load_config(None, ["train.warmup_steps=50", "train.max_steps=10"])


def test_malformed_yaml_names_line(tmp_path):
    with pytest.raises(ConfigError, match="line 3.*not valid YAML"):
        load_config(write(tmp_path, "train:\n  lr: 1\n   x: 2\n"))


def test_yaml_cannot_execute_code(tmp_path):
    p = write(tmp_path, "train: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError):
        load_config(p)
    assert not Path("pwned").exists()


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("no/such.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=2e-4", "finetune.lora.rank=4", "sample.stop=[a, b]"])
    again = load_config(write(tmp_path, dump_yaml(cfg)))
    assert again == cfg


def test_every_field_has_a_doc():
    missing = [key for key, _, _, doc in field_docs() if not doc]
    assert not missing, f"fields without a one-line doc: {missing}"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    assert path.read_text().startswith("#"), "a preset starts with the command that runs it"
    load_config(path)


def test_configs_exist():
    assert CONFIGS, "configs/ has no presets"

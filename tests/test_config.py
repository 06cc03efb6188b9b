"""``load_toml``: experiment files that extend other files, and the errors for bad ``extends``; reading and
writing config dicts."""

from __future__ import annotations

import json
import math

import pytest

from relpsp.config import config_from_dict, config_to_dict, load_toml


def _write(path, text):
    path.write_text(text)
    return path


def test_extends_merges_sections_key_by_key(tmp_path):
    _write(
        tmp_path / "base.toml",
        'name = "base"\ndescription = "the base"\n[model]\narch = "4-6-3"\ntheta = 2.0\n'
        '[data]\ndataset = "yinyang"\n[train]\nepochs = 7\nlr = 0.01\n',
    )
    child = _write(tmp_path / "child.toml", 'extends = "base.toml"\nname = "child"\n[train]\nlr = 0.02\ntau = 0.5\n')
    d = load_toml(child)
    assert d == {
        "name": "child",
        "model": {"arch": "4-6-3", "theta": 2.0},
        "data": {"dataset": "yinyang"},
        "train": {"epochs": 7, "lr": 0.02, "tau": 0.5},
    }
    cfg = config_from_dict(d)
    assert (cfg.model.theta, cfg.train.epochs, cfg.train.lr, cfg.train.tau) == (2.0, 7, 0.02, 0.5)


def test_extends_follows_chains_relative_to_each_file(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "a.toml", '[model]\narch = "4-6-3"\n[train]\nepochs = 1\nlr = 0.1\nseed = 5\n')
    _write(tmp_path / "sub" / "b.toml", 'extends = "../a.toml"\n[train]\nlr = 0.2\n')
    c = _write(tmp_path / "sub" / "c.toml", 'extends = "b.toml"\n[train]\nepochs = 3\n')
    d = load_toml(c)
    assert d["train"] == {"epochs": 3, "lr": 0.2, "seed": 5}
    assert "name" not in d and "extends" not in d


def test_name_is_not_inherited(tmp_path):
    _write(tmp_path / "base.toml", 'name = "base"\n[train]\nepochs = 2\n')
    d = load_toml(_write(tmp_path / "child.toml", 'extends = "base.toml"\n'))
    assert d == {"train": {"epochs": 2}}


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({"x.toml": 'extends = "x.toml"\n'}, "cycle"),
        ({"x.toml": 'extends = "y.toml"\n', "y.toml": 'extends = "x.toml"\n'}, "cycle"),
        ({"x.toml": 'extends = "nowhere.toml"\n'}, r"extends 'nowhere.toml', but .*nowhere.toml does not exist"),
        ({"x.toml": "extends = 3\n"}, "extends must be a file name"),
        ({"x.toml": 'extends = ""\n'}, "extends must be a file name"),
        ({"x.toml": 'extends = "y.toml"\n', "y.toml": "[train\n"}, "y.toml is not valid TOML"),
    ],
)
def test_bad_extends_is_refused(tmp_path, files, needle):
    for name, text in files.items():
        _write(tmp_path / name, text)
    with pytest.raises(ValueError, match=needle):
        load_toml(tmp_path / "x.toml")


def test_too_deep_a_chain_is_refused(tmp_path):
    _write(tmp_path / "f0.toml", "[train]\nepochs = 1\n")
    for i in range(1, 17):
        _write(tmp_path / f"f{i}.toml", f'extends = "f{i - 1}.toml"\n')
    assert load_toml(tmp_path / "f15.toml") == {"train": {"epochs": 1}}  # 16 files
    with pytest.raises(ValueError, match="more than 16 files in its extends chain"):
        load_toml(tmp_path / "f16.toml")


def test_null_is_accepted_only_for_settings_that_may_be_unset():
    """JSON null (``--set train.device=null``) used to pass as a text setting and fail later with a
    traceback; only ``data.data_dir``, whose default is unset, takes it."""
    assert config_from_dict({"data": {"data_dir": None}}).data.data_dir is None
    for section, key in (("train", "device"), ("data", "dataset"), ("model", "arch"), ("train", "optimizer")):
        with pytest.raises(ValueError, match=rf"{key} must be a string, got None"):
            config_from_dict({section: {key: None}})


def test_infinities_round_trip_with_their_sign():
    """``-inf`` used to be written as "inf" and came back positive."""
    cfg = config_from_dict({"data": {"bias_input": -math.inf}, "model": {"t_max": math.inf}})
    d = config_to_dict(cfg)
    assert d["data"]["bias_input"] == "-inf" and d["model"]["t_max"] == "inf"
    assert json.loads(json.dumps(d)) == d  # strict JSON
    back = config_from_dict(d)
    assert back == cfg and back.data.bias_input == -math.inf


@pytest.mark.parametrize("text", ["+-inf", "--inf", "-+Infinity", "infinite", "in f"])
def test_malformed_infinity_text_is_refused(text):
    """Any run of signs before "inf" used to read as an infinity; only what float() reads is taken."""
    with pytest.raises(ValueError, match=r"ModelConfig\.t_max must be a number"):
        config_from_dict({"model": {"t_max": text}})
    for good, value in (("inf", math.inf), ("+Infinity", math.inf), ("-INF", -math.inf)):
        assert config_from_dict({"data": {"bias_input": good}}).data.bias_input == value


@pytest.mark.parametrize("value", [[], "", 0, False, [1, 2]])
def test_a_section_that_is_not_a_table_is_refused(value):
    """A falsy section (``train = []`` in TOML) used to count as an empty table, and ``model = 0`` crashed."""
    with pytest.raises(ValueError, match=r"\[train\] must be a table of keys"):
        config_from_dict({"train": value})


def test_an_integer_beyond_the_float_range_is_refused_by_name():
    with pytest.raises(ValueError, match=r"TrainConfig\.lr is out of the range of a float"):
        config_from_dict({"train": {"lr": 10**400}})


def test_every_setting_is_listed_once_with_its_meaning():
    import dataclasses

    from relpsp.config import Config, DataConfig, ModelConfig, TrainConfig, list_settings

    settings = list_settings()
    fields = [
        (s, f.name)
        for s, c in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig))
        for f in dataclasses.fields(c)
    ]
    assert [(st.section, st.key) for st in settings] == fields
    for st in settings:
        assert len(st.doc) > 10 and "\n" not in st.doc, st.key
        assert st.default == getattr(getattr(Config(), st.section), st.key)
    assert {st.key: st.type for st in settings}["input_shape"] == "tuple[int, ...]"


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"model": {"t_max": "inf", "arch": "16C5p2-P2-32C5-P2-128-10", "kernel": "window"}},
        {"data": {"data_dir": 'dir "with" quotes\\ and é', "image_size": [48, 40], "dog_sigmas": [0.5, 3.0]}},
        {"data": {"bias_input": -1e-300, "elastic_alpha": 1e-5}, "train": {"lr": 3e-4, "tau": 0.025, "seed": -7}},
    ],
)
def test_config_to_toml_reads_back_to_the_same_config(overrides, tmp_path):
    from relpsp.config import config_to_toml

    cfg = config_from_dict(overrides)
    for comments in (True, False):
        text = config_to_toml(cfg, comments=comments)
        (tmp_path / "cfg.toml").write_text(text, encoding="utf-8")
        assert config_from_dict(load_toml(tmp_path / "cfg.toml")) == cfg
        assert ("# firing threshold" in text) == comments
    if cfg.data.data_dir is None:
        assert "# data_dir = (unset)" in config_to_toml(cfg)  # TOML has no null: left out, so it stays unset


def test_unknown_key_names_the_nearest_known_one():
    with pytest.raises(ValueError, match=r"\['weight_decy'\] \(did you mean 'weight_decay'\?\)"):
        config_from_dict({"train": {"weight_decy": 0.1}})
    with pytest.raises(ValueError) as e:
        config_from_dict({"model": {"zzzz": 1}})
    assert "did you mean" not in str(e.value) and "--show-config" in str(e.value)

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from native_megatron.utils.config import (
    ConfigError,
    describe_config,
    dump_yaml,
    field_docs,
    format_config_help,
    load_config,
    parse_override,
    split_overrides,
)


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10
    name: str = "x"
    flag: bool = False
    kind: Literal["a", "b"] = "a"
    paths: list[str] = field(default_factory=list)
    maybe: int | None = None
    # Weighted or plain: [0.5, a, 0.5, b] or [a, b].
    blend: list[Any] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    ratio: float = 0.5  # a trailing comment documents too

    def validate(self):
        if self.steps < 0:
            raise ConfigError("inner.steps must be >= 0")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    top: int = 1


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lr: 0.5\n  steps: 3\ntop: 7\n")
    cfg = load_config(Outer, path, ["--inner.steps=5", "--inner.paths=[a, b]", "--inner.maybe=null"])
    assert cfg.inner.lr == 0.5 and cfg.inner.steps == 5 and cfg.top == 7
    assert cfg.inner.paths == ["a", "b"] and cfg.inner.maybe is None


def test_int_is_accepted_for_float_and_string_numbers_for_str():
    cfg = load_config(Outer, overrides=["--inner.lr=1", "--inner.name=123"])
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.name == "123"


@pytest.mark.parametrize("override, message", [
    ("--inner.stepz=3", "unknown config key 'inner.stepz' (did you mean 'steps'?)"),
    ("--inner.steps=abc", "inner.steps: expected an integer"),
    ("--inner.flag=maybe", "inner.flag: expected true or false"),
    ("--inner.kind=c", "inner.kind: 'c' is not one of 'a', 'b'"),
    ("--inner.steps=-1", "inner.steps must be >= 0"),
    ("--top.x=1", "top: expected an integer"),
])
def test_mistakes_give_one_clear_line(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(Outer, overrides=[override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)


def test_dump_round_trips(tmp_path):
    cfg = load_config(Outer, overrides=["--inner.paths=[x]", "--inner.kind=b"])
    dump_yaml(cfg, tmp_path / "out.yaml")
    assert load_config(Outer, tmp_path / "out.yaml") == cfg


def test_split_and_parse_overrides():
    rest, overrides = split_overrides(["--input", "a.jsonl", "--clean.min_chars=5", "--workers=2"])
    assert rest == ["--input", "a.jsonl", "--workers=2"] and overrides == ["--clean.min_chars=5"]
    assert parse_override("--optim.lr=0.5") == (["optim", "lr"], 0.5)
    # YAML reads 3e-4 as a string; a float field still takes it.
    assert load_config(Outer, overrides=["--inner.lr=3e-4"]).inner.lr == 3e-4
    assert parse_override("--data.paths=[0.7, a, 0.3, b]")[1] == [0.7, "a", 0.3, "b"]


def test_key_space_value_works_like_key_equals_value():
    rest, overrides = split_overrides(["--config", "c.yaml", "--inner.lr", "1e-4", "--inner.steps=3", "--top", "2"],
                                      top_keys=["top"])
    assert rest == ["--config", "c.yaml"]
    assert overrides == ["--inner.lr=1e-4", "--inner.steps=3", "--top=2"]
    cfg = load_config(Outer, overrides=overrides)
    assert cfg.inner.lr == 1e-4 and cfg.top == 2
    with pytest.raises(ConfigError, match="--inner.lr needs a value"):
        split_overrides(["--inner.lr", "--other"])


def test_comma_lists_keep_numbers_for_weighted_blends_and_text_for_str_lists():
    cfg = load_config(Outer, overrides=["--inner.blend=0.5,a,0.5,b", "--inner.paths=1,a", "--inner.sizes=1,2"])
    assert cfg.inner.blend == [0.5, "a", 0.5, "b"]
    assert cfg.inner.paths == ["1", "a"] and cfg.inner.sizes == [1, 2]


def test_a_wrong_list_shows_the_list_syntax():
    with pytest.raises(ConfigError) as err:
        load_config(Outer, overrides=["--inner.sizes=1,x"])
    assert "inner.sizes[1]: expected an integer" in str(err.value)
    assert "--inner.sizes=a,b or --inner.sizes='[a, b]'" in str(err.value)


def test_an_unknown_key_lists_the_valid_keys_of_its_section():
    with pytest.raises(ConfigError) as err:
        load_config(Outer, overrides=["--inner.stepz=3"])
    assert "valid keys of inner: lr, steps, name, flag, kind, paths, maybe, blend, sizes, ratio" in str(err.value)
    with pytest.raises(ConfigError, match="valid sections and keys: inner, top"):
        load_config(Outer, overrides=["--innr.lr=3"])


def test_help_lists_every_key_with_type_default_and_the_comment_above_it():
    assert field_docs(Inner) == {"blend": "Weighted or plain: [0.5, a, 0.5, b] or [a, b].",
                                 "ratio": "a trailing comment documents too"}
    keys = [row[0] for row in describe_config(Outer)]
    assert keys == [f"inner.{k}" for k in ("lr", "steps", "name", "flag", "kind", "paths", "maybe", "blend",
                                            "sizes", "ratio")] + ["top"]
    text = format_config_help(Outer)
    assert "  --inner.kind {a,b}  (default: a)" in text
    assert "  --inner.maybe int | null  (default: null)" in text
    assert "  --inner.blend list[any]  (default: [])\n      Weighted or plain" in text

"""A checkpoint's config.yaml read as typed settings: old checkpoints, other versions, broken files."""

from __future__ import annotations

import logging

import pytest
import yaml

from native_megatron.training.checkpointing import CheckpointError, read_saved_config
from native_megatron.training.config import TrainConfig, adopt_checkpoint_model
from native_megatron.utils.config import config_to_dict, load_config
from tests.helpers.training import TINY

ARGS = ["--data.mock=true", "--data.paths=[]"]


def checkpoint(tmp_path, settings) -> str:
    """A checkpoint directory whose config.yaml holds ``settings`` (a mapping, or raw text)."""
    ckpt = tmp_path / "iter_0000004"
    ckpt.mkdir()
    text = settings if isinstance(settings, str) else yaml.safe_dump(settings)
    (ckpt / "config.yaml").write_text(text, encoding="utf-8")
    return ckpt


def test_an_old_checkpoint_missing_model_keys_adopts_what_it_holds_and_no_defaults(tmp_path):
    # Written before rotary_base and add_qkv_bias were saved: only the keys it holds are its settings.
    saved = read_saved_config(checkpoint(tmp_path, {"model": {"num_layers": 4, "hidden_size": 64}}))
    assert {"model.num_layers", "model.hidden_size"} <= saved.keys and "model.rotary_base" not in saved.keys
    cfg = load_config(TrainConfig, TINY, [*ARGS, "--model.num_layers=2", "--model.rotary_base=10000"])
    adopted = adopt_checkpoint_model(cfg, saved, {"model.rotary_base"}, "ckpt")
    assert adopted.model.num_layers == 4           # taken: the checkpoint holds it, the user did not set it
    assert adopted.model.rotary_base == 10000.0    # kept: the checkpoint's default 500000 is no setting of it
    # Even with every key counted as the user's, a key the checkpoint lacks is no conflict.
    same = load_config(TrainConfig, TINY, [*ARGS, "--model.num_layers=4", "--model.rotary_base=10000"])
    assert adopt_checkpoint_model(same, saved, None, "ckpt") is same


def test_a_key_this_version_does_not_know_is_one_warning_and_the_rest_is_read(tmp_path, caplog):
    settings = config_to_dict(TrainConfig())
    settings["model"]["num_layers"] = 6
    settings["model"]["old_knob"] = 3
    settings["legacy"] = {"a": 1}
    ckpt = checkpoint(tmp_path, settings)
    with caplog.at_level(logging.WARNING):
        saved = read_saved_config(ckpt)
        read_saved_config(ckpt)  # a conversion reads it twice: still one warning
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "model.old_knob" in warning and "legacy" in warning and str(ckpt) in warning
    assert saved.config.model.num_layers == 6 and set(saved.unknown) == {"model.old_knob", "legacy"}
    assert "model.old_knob" not in saved.keys


@pytest.mark.parametrize("text, message", [
    ("model: {num_layers: [4\n", "is not valid YAML"),
    ("- model\n- data\n", "must hold a mapping"),
    ("model:\n  num_layers: four\n", "model.num_layers: expected an integer"),
])
def test_a_broken_config_yaml_is_one_line_naming_the_file(tmp_path, text, message):
    ckpt = checkpoint(tmp_path, text)
    with pytest.raises(CheckpointError, match=message) as exc:
        read_saved_config(ckpt)
    assert "\n" not in str(exc.value) and str(ckpt / "config.yaml") in str(exc.value)


def test_a_checkpoint_without_config_yaml_reads_as_none(tmp_path):
    assert read_saved_config(tmp_path) is None

"""Reading HF config.json files (transformers 4 and 5 spellings) into the model's shape, and refusing what
cannot convert, with one line saying why; old import records still export."""

from __future__ import annotations

import json

import pytest
import yaml

from native_megatron.convert.llama import read_hf_config
from native_megatron.utils.config import ConfigError


def write_config(tmp_path, **overrides):
    c = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 64,
         "intermediate_size": 160, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
         "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}, "tie_word_embeddings": True,
         "use_sliding_window": False, "sliding_window": None, "layer_types": ["full_attention"] * 2, **overrides}
    (tmp_path / "config.json").write_text(json.dumps(c))
    return tmp_path


def test_qwen2_reads_as_llama_with_qkv_biases_and_exports_as_qwen2(tmp_path):
    import torch

    from native_megatron.convert.llama import hf_config_dict

    shape = read_hf_config(write_config(tmp_path))
    assert (shape.family, shape.qkv_bias, shape.tied, shape.rope_theta, shape.rope_scaling) == \
        ("qwen2", True, True, 1e6, False)
    assert shape.model_overrides()["model.add_qkv_bias"] is True
    config = hf_config_dict(shape, torch.bfloat16, None, 2)
    assert (config["model_type"], config["architectures"], config["use_sliding_window"]) == \
        ("qwen2", ["Qwen2ForCausalLM"], False)


def test_llama31_rope_scaling_saved_by_transformers5_is_read(tmp_path):
    from transformers import LlamaConfig

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
    LlamaConfig(architectures=["LlamaForCausalLM"], vocab_size=300, hidden_size=64, num_hidden_layers=1,
                num_attention_heads=4, max_position_embeddings=131072, rope_scaling=scaling).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "rope_scaling" not in config  # transformers 5 keeps it in rope_parameters
    shape = read_hf_config(tmp_path)
    assert (shape.family, shape.qkv_bias, shape.rope_scaling, shape.rope_theta) == ("llama", False, True, 500000.0)


@pytest.mark.parametrize("overrides, message", [
    ({"use_sliding_window": True, "sliding_window": 4096}, "sliding-window attention is not supported"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "sliding-window attention is not supported"),
    ({"rope_parameters": {"rope_theta": 1e6, "rope_type": "yarn", "factor": 4.0}}, "rope scaling .* not supported"),
    ({"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe"}, "Qwen2MoeForCausalLM .* not supported"),
    ({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}, "Qwen3ForCausalLM .* not supported"),
])
def test_unsupported_qwen_variants_are_refused_clearly(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        read_hf_config(write_config(tmp_path, **overrides))


def test_an_import_record_from_before_qwen2_exports_as_llama(tmp_path):
    from native_megatron.convert.checkpoint import _checkpoint_shape

    record = {"layers": 2, "hidden": 64, "ffn": 160, "heads": 4, "kv_heads": 2, "vocab": 300, "max_positions": 64,
              "rope_theta": 500000.0, "rope_scaling": False, "eps": 1e-5, "tied": False}
    (tmp_path / "hf_llama.json").write_text(json.dumps(record))
    shape = _checkpoint_shape(tmp_path, None)
    assert (shape.family, shape.qkv_bias, shape.vocab) == ("llama", False, 300)


def test_an_export_reads_the_shape_from_the_saved_config_and_refuses_one_missing_a_shape_key(tmp_path):
    from native_megatron.convert.checkpoint import _checkpoint_shape, checkpoint_tokenizer
    from native_megatron.training.config import TrainConfig
    from native_megatron.utils.config import config_to_dict

    settings = config_to_dict(TrainConfig())
    settings["model"].update(num_layers=3, vocab_size=300, old_knob=1)  # old_knob: from another version
    settings["data"]["tokenizer"] = "/data/tok"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(settings))
    shape = _checkpoint_shape(tmp_path, None)
    assert (shape.layers, shape.vocab, shape.max_positions, shape.family) == (3, 300, 128, "llama")
    assert checkpoint_tokenizer(tmp_path) == "/data/tok"
    del settings["model"]["ffn_hidden_size"]  # an older config: a default would export the wrong shape
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError, match="does not give model.ffn_hidden_size"):
        _checkpoint_shape(tmp_path, None)

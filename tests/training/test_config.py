"""Every training config rule fails before any work, with one line that says what to change."""

import pytest

from native_megatron.training.config import TrainConfig, parse_blend, validate_for_world
from native_megatron.utils.config import ConfigError, load_config

MOCK = ["--data.mock=true"]


def cfg(*overrides):
    return load_config(TrainConfig, overrides=MOCK + list(overrides))


@pytest.mark.parametrize("overrides, message", [
    (["--model.hidden_size=66", "--model.num_attention_heads=4"], "hidden_size (66) must be divisible by model.num_attention_heads"),  # noqa: E501
    (["--model.num_query_groups=3"], "num_attention_heads (4) must be divisible by model.num_query_groups (3)"),
    (["--model.hidden_size=24", "--model.num_attention_heads=8", "--model.num_query_groups=8"], "head dimension"),
    (["--parallel.tensor=8"], "num_attention_heads (4) must be divisible by parallel.tensor (8)"),
    (["--parallel.tensor=4"], "num_query_groups (2) must be divisible by parallel.tensor (4)"),
    (["--model.num_layers=3", "--parallel.pipeline=2"], "num_layers (3) must be divisible by the pipeline stages"),
    (["--model.num_layers=4", "--parallel.pipeline=2", "--parallel.virtual_pipeline=4"], "pipeline stages"),
    (["--parallel.virtual_pipeline=2"], "virtual_pipeline needs parallel.pipeline >= 2"),
    (["--schedule.warmup_steps=50", "--schedule.train_steps=20"], "warmup_steps (50) must be below"),
    (["--optim.min_lr=1", "--optim.lr=0.1"], "min_lr"),
    (["--data.split=90,10"], "three non-negative numbers"),
    (["--data.seq_length=256", "--model.max_position_embeddings=128"], "exceeds model.max_position_embeddings"),
    (["--checkpoint.init_from=/nonexistent"], "is not a directory"),
    (["--model.spec=fused"], "is not one of"),
])
def test_rules(overrides, message):
    with pytest.raises(ConfigError) as err:
        cfg(*overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_data_paths_must_exist_and_name_a_prefix(tmp_path):
    with pytest.raises(ConfigError, match="data.paths is empty"):
        load_config(TrainConfig, overrides=["--data.tokenizer=x"])
    with pytest.raises(ConfigError, match=r"nope_text_document.bin not found"):
        load_config(TrainConfig, overrides=["--data.tokenizer=x", f"--data.paths=[{tmp_path}/nope_text_document]"])
    (tmp_path / "a.bin").write_bytes(b"")
    (tmp_path / "a.idx").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"data.tokenizer: x not found"):
        load_config(TrainConfig, overrides=["--data.tokenizer=x", f"--data.paths=[{tmp_path}/a]"])
    (tmp_path / "tok.model").write_bytes(b"")
    c = load_config(TrainConfig, overrides=[f"--data.tokenizer={tmp_path}/tok.model",
                                            f"--data.paths=[0.7, {tmp_path}/a, 0.3, {tmp_path}/a]"])
    assert parse_blend(c.data.paths) == ([0.7, 0.3], [f"{tmp_path}/a", f"{tmp_path}/a"])


def test_blend_parsing():
    assert parse_blend(["a", "b"]) == (None, ["a", "b"])
    with pytest.raises(ConfigError, match="alternates weight and prefix"):
        parse_blend([0.5, "a", 0.5])
    with pytest.raises(ConfigError, match="negative"):
        parse_blend([-1, "a"])


@pytest.mark.parametrize("world, overrides, message", [
    (3, ["--parallel.tensor=2"], "world size 3 is not divisible by parallel.tensor x parallel.pipeline"),
    (4, ["--parallel.tensor=2", "--parallel.data=1"], "2 x 1 x 1 = 2, but the world size is 4"),
    (2, ["--schedule.global_batch_size=6", "--schedule.micro_batch_size=2"], "global_batch_size (6) must be divisible"),
    (2, ["--model.num_layers=4", "--parallel.pipeline=2", "--parallel.virtual_pipeline=2", "--schedule.global_batch_size=12",  # noqa: E501
         "--schedule.micro_batch_size=4"], "multiple of parallel.pipeline"),
])
def test_world_size_rules(world, overrides, message):
    with pytest.raises(ConfigError) as err:
        validate_for_world(cfg(*overrides), world)
    assert message in str(err.value)


def test_world_size_gives_data_parallel_size():
    assert validate_for_world(cfg("--parallel.tensor=2"), 8) == 4
    assert validate_for_world(cfg("--parallel.tensor=2", "--parallel.pipeline=2", "--parallel.data=2"), 8) == 2


@pytest.mark.parametrize("name, world", [("llama3_8b", 8), ("llama3_8b", 32), ("llama3_70b", 32), ("llama3_70b", 64)])
def test_example_configs_are_valid_for_their_cluster_sizes(name, world):
    from pathlib import Path

    from native_megatron.training.metrics import ModelShape

    path = Path(__file__).resolve().parents[2] / "examples" / "configs" / f"{name}.yaml"
    c = load_config(TrainConfig, path, ["--data.mock=true", "--checkpoint.init_from=null"])
    dp = validate_for_world(c, world)
    assert dp * c.parallel.tensor * c.parallel.pipeline == world
    m = c.model
    params = ModelShape(m.num_layers, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads,
                        m.num_query_groups, m.vocab_size).num_params()
    assert params == {"llama3_8b": 8_030_261_248, "llama3_70b": 70_553_706_496}[name]


def test_tiny_cpu_config_is_valid():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "configs" / "tiny_cpu.yaml"
    c = load_config(TrainConfig, path, ["--data.mock=true"])
    assert validate_for_world(c, 1) == 1

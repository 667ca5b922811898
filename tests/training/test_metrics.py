"""The FLOPs and parameter formulas behind tokens/s, TFLOP/s and MFU, checked against published figures."""

import pytest

from native_megatron.training.metrics import ModelShape, throughput

LLAMA3_8B = ModelShape(32, 4096, 14336, 32, 8, 128_256)
LLAMA3_70B = ModelShape(80, 8192, 28672, 64, 8, 128_256)


def test_parameter_counts_match_the_published_models():
    # Sums of the tensors in Meta's released safetensors.
    assert LLAMA3_8B.num_params() == 8_030_261_248
    assert LLAMA3_70B.num_params() == 70_553_706_496


@pytest.mark.parametrize("shape", [LLAMA3_8B, LLAMA3_70B])
def test_flops_per_token_is_6n_plus_attention(shape):
    seq = 8192
    # 6N with N the non-embedding parameters plus the output layer, and 12 L s h for attention.
    n = shape.num_params() - shape.vocab_size * shape.hidden_size  # the input embedding does no FLOPs
    expected = 6 * n + 12 * shape.num_layers * seq * shape.hidden_size
    assert shape.flops_per_token(seq) == pytest.approx(expected, rel=0.01)


def test_throughput_and_mfu():
    # 1M tokens/s of an 8B model on 64 GPUs at 989 TFLOP/s peak.
    fpt = LLAMA3_8B.flops_per_token(8192)
    tok_s, tflops, mfu = throughput(1_000_000, 1.0, fpt, 64, 989.0)
    assert tok_s == 1_000_000
    assert tflops == pytest.approx(fpt * 1e6 / 64 / 1e12)
    assert mfu == pytest.approx(tflops / 989.0)
    assert throughput(10, 1.0, fpt, 1, None)[2] is None

"""Model shapes the benchmarks and the GPU check share, as overrides of examples/configs/tiny_cpu.yaml.

No imports: benchmarks/gpu_check.py reads these before it has installed anything.
"""

PRESETS = {
    # ~1.5B parameters: 16 layers, hidden 2048, GQA 32/8, SwiGLU 8192, Llama-3 vocabulary, sequence 4096.
    "1b": ["--model.num_layers=16", "--model.hidden_size=2048", "--model.ffn_hidden_size=8192",
           "--model.num_attention_heads=32", "--model.num_query_groups=8", "--model.vocab_size=128256",
           "--data.seq_length=4096", "--precision=bf16",
           # tiny_cpu.yaml's learning rate (3e-3) is a tiny model's; keep the 1B model's loss finite.
           "--optim.lr=3.0e-4", "--optim.min_lr=3.0e-5"],
    "tiny": ["--model.vocab_size=512", "--data.seq_length=64", "--precision=fp32"],
}

"""native_megatron: native alignment pre-training for Arabic LLMs on megatron-core."""

from setuptools import find_packages, setup

setup(
    name="native_megatron",
    version="0.1.0",
    description="Native alignment pre-training for Arabic LLMs: rewrite, tokenize, train on megatron-core",
    packages=find_packages(include=["native_megatron", "native_megatron.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        # 0.17+ needs Python >= 3.12; 0.16.1 ships compiled dataset helpers for 3.10/3.11.
        "megatron-core>=0.16.1",
        "sentencepiece>=0.2.0",
        "tokenizers>=0.20",
        "numpy",
        "pyyaml",
        "tqdm",
        "datasketch>=2.0",
        "pyarrow",
        "zstandard",
        # megatron-core's checkpoint writer needs it and hangs (its writer process dies) without it.
        "psutil",
        "tensorboard",
    ],
    extras_require={
        "gpu": ["transformer-engine[pytorch]"],
        "rewrite": ["vllm"],
        "dev": ["pytest>=8", "pytest-timeout"],
    },
)

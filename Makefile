# The README's two commands: `make demo` and `make test`. Each creates .venv on
# first use (CPU torch, the package with its dev extra) and then runs.
PYTHON ?= python3
VENV   ?= .venv
# CPU wheel for these machines; on a GPU cluster install your CUDA torch first
# (TORCH= skips this step).
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install demo test test-fast gpu-check gpu-dry-run clean

help:
	@echo "make demo   preprocess the shipped Arabic sample (raw and aligned), train a tiny model on the blend, evaluate it"
	@echo "make test   run the test suite"
	@echo "make test-fast  the suite without the tests marked slow (the inner loop)"
	@echo "make gpu-check  on NVIDIA GPUs: build, test and measure every GPU path (WHEELS=DIR OUT=DIR; docs/kernels.md)"
	@echo "make gpu-dry-run  gpu-check's dry run in a venv holding only the lent GPU machine's packages (CI runs it)"

install: $(STAMP)

# --no-build-isolation: setup.py compiles csrc/ against the torch installed here.
$(STAMP): setup.py pyproject.toml $(wildcard csrc/*)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(BIN)/python -m pip install -q $(TORCH))
	$(BIN)/python -m pip install -q setuptools wheel
	$(BIN)/python -m pip install -q --no-build-isolation -e '.[dev]'
	touch $(STAMP)

# The demo: raw baseline data, the same sample natively aligned by a (tiny, random)
# rewriter, a tiny model trained on a 50/50 blend of the two, and its evaluation on
# the sample tasks (examples/eval). The random rewriter's output fails validation by
# design (every document is kept raw), so the demo accepts a run that rewrote nothing:
# rewrite.min_rewritten_fraction=0. With a real rewriter, leave the default (0.5).
DEMO := runs/demo
demo: install
	$(BIN)/python tools/preprocess_aligned.py --rewrite none --overwrite --no-progress \
		--input examples/data/sample_ar.jsonl --tokenizer examples/tokenizer/sample_ar.model \
		--output-prefix $(DEMO)/data/sample_ar
	$(BIN)/python tools/make_tiny_model.py --out $(DEMO)/tiny_rewriter --corpus examples/data/sample_ar.jsonl
	$(BIN)/python tools/preprocess_aligned.py --overwrite --no-progress \
		--input examples/data/sample_ar.jsonl --tokenizer examples/tokenizer/sample_ar.model \
		--output-prefix $(DEMO)/data/sample_ar_aligned \
		--rewrite hf --model $(DEMO)/tiny_rewriter --guidelines examples/guidelines/native_alignment_ar.yaml \
		--rewrite.sampling.max_new_tokens=16 --rewrite.on_failure=keep_raw --rewrite.min_rewritten_fraction=0
	$(BIN)/python tools/review_rewrites.py --prefix $(DEMO)/data/sample_ar_aligned --out $(DEMO)/review.html
	rm -rf $(DEMO)/tiny_cpu
	$(BIN)/python pretrain_arabic.py --config examples/configs/tiny_cpu.yaml
	$(BIN)/python tools/evaluate.py --model demo=$(DEMO)/tiny_cpu/checkpoints --out $(DEMO)/eval --log-samples \
		--max-new-tokens 32 --no-progress

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# On a machine with NVIDIA GPUs and a CUDA build of torch: no venv (it would bring CPU torch), the
# python3 that has that torch. WHEELS=DIR installs the wheels there first, offline; OUT=DIR (else
# ./gpu_check) gets gpu_check.json and gpu_check.log; GPU_CHECK_ARGS=--dry-run checks it on a CPU.
GPU_CHECK_ARGS ?=
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py $(if $(WHEELS),--wheels $(WHEELS)) $(if $(OUT),--out $(OUT)) $(GPU_CHECK_ARGS)

# The dry run as the lent machine would see it: a throwaway venv (.gpu_dry_run/) with only its image's
# packages, no pip, and the carried wheels (benchmarks/gpu_dry_run.sh).
gpu-dry-run:
	PYTHON=$(PYTHON) bash benchmarks/gpu_dry_run.sh

clean:
	rm -rf runs build *.egg-info

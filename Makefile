# The README's two commands: `make demo` runs the main job, `make test` runs the whole suite
# (ruff included, as tests/infra_tests/test_ruff.py). Both set up .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The CPU build: a plain `pip install torch` would pull the multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

ARTIFACTS ?= test-artifacts/demo
# A small efficientformer architecture in the space's short-string form (128 px input, one or two
# blocks per stage, one attention block): it exports in seconds.
DEMO_ARCH ?= r128_w32-64-128-192_d1-1-2-2_v1_m4-4-4-4-4-4
# The main job. TODO: becomes `nasvit search --space efficientformer --budget 2ms` once the
# search pipeline lands; change only this line.
DEMO_CMD ?= $(BIN)/nasvit spaces && \
	$(BIN)/nasvit export --space efficientformer --arch $(DEMO_ARCH) --out $(ARTIFACTS)/model.onnx

.PHONY: demo test venv clean-venv

demo: $(STAMP)
	mkdir -p $(ARTIFACTS)
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

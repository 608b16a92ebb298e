# Two entry points, each doing all of its own set-up (virtual environment, pinned packages, CIFAR-10):
#   make train   the laptop run of lesson 1 (SimCLR on CIFAR-10), ending with k-NN beside lesson 0's yardsticks
#   make test    unit tests, then nbval over every notebook at the smoke budget with the numerically sensitive
#                tests on another CPU's float sums (what .ci/run calls)
# CIFAR-10 comes from --data / $SSL_LESSONS_CIFAR10 (a folder or .tar.gz), else data/cifar10.pt, else a download.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: train test setup data lab bench

setup: $(STAMP)
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-* && touch $@

data: setup
	$(PY) -m ssl_lessons prepare-data

train: data
	$(PY) -m ssl_lessons train --method simclr --preset cifar10-laptop

# The unit tests on this CPU's own kernels with all its threads; then, as another CPU would sum floats, the
# numerically sensitive tests and every notebook's checked outputs with PyTorch's non-vectorised kernels at 1 thread.
test: data
	SSL_LESSONS_SMOKE=1 SSL_LESSONS_RUNS=$$(mktemp -d) $(PY) -m pytest -q --durations=10 tests
	SSL_LESSONS_SMOKE=1 SSL_LESSONS_RUNS=$$(mktemp -d) ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 \
		$(PY) -m pytest -q --durations=10 -m numerics tests notebooks \
		--nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

bench: data
	$(PY) -m ssl_lessons bench --preset cifar10-laptop

# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each builds .venv from the pinned requirements.txt when it is missing or older than it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The package is installed into .venv the way the README says (`pip install -e .`), which also
# builds the native kernels (cnn_jax/native: oneDNN convolutions and Winograd kernels, C++
# through XLA's FFI) into the user cache, keyed by their sources; an edited source rebuilds
# them here. Without a C++ compiler one line says so and XLA's convolutions run instead.
NATIVE_SOURCES := $(wildcard cnn_jax/native/csrc/*)
NATIVE_STAMP := $(VENV)/.native-built
# The pure path is tested with an empty cache: no native library, as on a machine without g++.
PURE_PATH_TESTS := tests/test_train.py tests/test_grad_modes.py tests/test_models.py

.PHONY: demo test test-full venv bench clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing pinned requirements and the package into $(VENV) (first run only; ~1 min)..."
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@$(PY) -m pip install --quiet --disable-pip-version-check -e .
	@$(PY) -m cnn_jax.native status
	@touch $@

$(NATIVE_STAMP): $(NATIVE_SOURCES) $(STAMP)
	@$(PY) -m cnn_jax.native build
	@touch $@

# The main job: the depth study on offline data (prints its results table).
demo: $(STAMP) $(NATIVE_STAMP)
	$(VENV)/bin/cnn-jax --experiment=depth_study --config=experiments/configs/depth_study.py:demo --workdir=runs/depth_study_demo

# The test suite (CI runs it): the trainer's tests on the pure path (no native library), then
# everything with the native kernels.
test: $(STAMP) $(NATIVE_STAMP)
	@mkdir -p $(VENV)/empty-cache
	XDG_CACHE_HOME=$(CURDIR)/$(VENV)/empty-cache $(PY) -m cnn_jax.native status
	XDG_CACHE_HOME=$(CURDIR)/$(VENV)/empty-cache $(PY) -m pytest -q -n 2 --dist=loadfile $(PURE_PATH_TESTS)
	$(PY) -m cnn_jax.native status
	$(PY) -m pytest -q -n 2 --dist=loadfile tests cnn_jax/native/tests

# Slow extras (full gradcheck grid, long resume runs).
test-full: $(STAMP) $(NATIVE_STAMP)
	CNN_JAX_FULL_TESTS=1 $(PY) -m pytest -q -n 2 --dist=loadfile tests cnn_jax/native/tests

bench: $(STAMP) $(NATIVE_STAMP)
	$(PY) -m bench.train_step --model=resnet --depth=20 --batch=128

clean:
	rm -rf $(VENV) runs .pytest_cache

# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each builds .venv from the pinned requirements.txt when it is missing or older than it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# oneDNN's convolutions (and the Winograd kernels for 3x3 layers) as an XLA FFI library
# (cnn_jax/ops/onednn.py); if it cannot be built (no C++ compiler), one line says so and XLA's
# convolutions run instead.
ONEDNN_LIB := cnn_jax/ops/_onednn_conv.so
ONEDNN_SOURCES := cnn_jax/ops/onednn_conv.cc cnn_jax/ops/winograd_f2x3.h cnn_jax/ops/winograd_f4x3.h cnn_jax/ops/channel_sums.h

.PHONY: demo test test-full venv bench clean

venv: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing pinned requirements into $(VENV) (first run only; ~1 min)..."
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

$(ONEDNN_LIB): $(ONEDNN_SOURCES) $(STAMP)
	@$(PY) -m cnn_jax.ops.onednn build

# The main job: the depth study on offline data (prints its results table).
demo: $(STAMP) $(ONEDNN_LIB)
	$(PY) launch.py --experiment=depth_study --config=experiments/configs/depth_study.py:demo --workdir=runs/depth_study_demo

# The test suite. CI=true (set by CI) keeps the quick grids; locally the same.
test: $(STAMP) $(ONEDNN_LIB)
	$(PY) -m pytest -q -n 2 --dist=loadfile tests

# Slow extras (full gradcheck grid, long resume runs).
test-full: $(STAMP) $(ONEDNN_LIB)
	CNN_JAX_FULL_TESTS=1 $(PY) -m pytest -q -n 2 --dist=loadfile tests

bench: $(STAMP) $(ONEDNN_LIB)
	$(PY) -m bench.train_step --model=resnet --depth=20 --batch=128

clean:
	rm -rf $(VENV) runs .pytest_cache $(ONEDNN_LIB)

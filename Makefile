# One command each; every target creates/updates the virtual environment it needs.
#   make train   the main job: mock training on CPU with 8 fake devices, local checkpoints, wandb offline
#   make test    the test suite (what CI runs), one test file per core (pytest-xdist), then the `alone` tests
#   make pod     2 simulated hosts x 4 fake devices on 127.0.0.1
#   make preflight  is that 2x4 pod ready? every check on every host, one table, preflight.json
#   make bench   every bench/ script at full size, ratios measured side by side (tiny sizes: python -m bench.run_all --tiny)
#   make soak    long kill/resume soak tests
#   make fit     will a 1B transformer fit on a TPU v5e-16? (compiles for TPU on this CPU; no TPU needed)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | sha1sum | cut -c1-12)

.PHONY: train test pod preflight bench soak fit

$(INSTALLED): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

train: $(INSTALLED)
	$(BIN)/harness-train --config cpu-8-devices --overwrite

test: $(INSTALLED)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m 'not soak and not alone'
	$(BIN)/python -m pytest -q -m alone

pod: $(INSTALLED)
	$(BIN)/python -m launch.local --num_processes 2 --devices_per_process 4 -- \
		$(BIN)/harness-train --config local-2x4 --overwrite

preflight: $(INSTALLED)
	$(BIN)/python -m launch.local --num_processes 2 --devices_per_process 4 -- \
		$(BIN)/harness-preflight --config local-2x4

bench: $(INSTALLED)
	$(BIN)/python -m bench.run_all

soak: $(INSTALLED)
	$(BIN)/python -m pytest -q -m soak

fit: $(INSTALLED)
	$(BIN)/harness-fit --config v5litepod-16 --model transformer --model_size 1b --compute_dtype bfloat16 \
		--remat full --fsdp_devices 16 --run_dir /tmp/podharness_fit/v5litepod-16-1b

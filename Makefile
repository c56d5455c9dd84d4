# rt-decoder: the two commands a newcomer needs are `make demo` and `make test`.
# Both bootstrap .venv through the idempotent `venv` target.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench clean models bindings-c

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch: exactly the local CPU build (the [train] extra allows a range; never let pip pick one)
	$(PY) -m pip install -q -e '.[dev,train,nwb,scale]' 'torch==2.13.0'
	# real Suite2p for the suite2p-live comparison test; --no-deps: see pyproject's dev extra
	$(PY) -m pip install -q --no-deps 'suite2p==0.14.6'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/rt-decoder demo

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) -m benchmarks.deconv --out bench-deconv.json
	$(PY) -m benchmarks.cold_start --out bench-cold-start.json
	$(PY) -m benchmarks.latency --out bench-latency.json
	$(PY) -m benchmarks.encoder --out bench-encoder.json
	$(PY) -m benchmarks.rig_pacing --out bench-rig-pacing.json
	$(PY) -m benchmarks.bindings --out bench-bindings.json
	$(PY) -m benchmarks.calibration --out bench-calibration.json
	$(PY) -m benchmarks.quality --out bench-quality.json
	$(PY) -m benchmarks.viewer --out bench-viewer.json
	$(PY) -m benchmarks.scale --out bench-scale.json

# The shipped demo model (rt_decoder/models/demo, ~4 MB): simulate the default virtual rig
# (8,000 neurons, 300 trials: 240 train / 30 validation / 30 test, seed 0, responses from the
# online deconvolution), train 3 encoder members for a fixed 2 epochs each (no wall-clock cap,
# so it reproduces on any machine) and fit the amortised decoder. About 40-60 min on 2 CPU cores.
# Graphs are not shipped: they are built on load.
models: venv
	$(VENV)/bin/rt-decoder simulate --out build/demo-data --neurons 8000 --trials 300 --seed 0 \
	    --responses deconv --overwrite --no-progress
	$(VENV)/bin/rt-decoder train --data build/demo-data --out rt_decoder/models/demo --ensemble 3 \
	    --seed 0 --epochs 2 --patience 2 --no-export --overwrite

# C publisher (bindings/c): needs libzmq headers (Debian: apt-get install libzmq3-dev).
BINDINGS_C := build/bindings/c
bindings-c: $(BINDINGS_C)/librt_publisher.a $(BINDINGS_C)/rt_publisher_example

$(BINDINGS_C)/librt_publisher.a: bindings/c/rt_publisher.c bindings/c/rt_publisher.h
	@pkg-config --exists libzmq || { echo "libzmq not found: apt-get install libzmq3-dev" >&2; exit 1; }
	mkdir -p $(BINDINGS_C)
	$(CC) -std=c99 -O2 -Wall -Wextra -Werror $$(pkg-config --cflags libzmq) -c bindings/c/rt_publisher.c -o $(BINDINGS_C)/rt_publisher.o
	$(AR) rcs $@ $(BINDINGS_C)/rt_publisher.o

$(BINDINGS_C)/rt_publisher_example: bindings/c/rt_publisher_example.c $(BINDINGS_C)/librt_publisher.a
	$(CC) -std=c99 -O2 -Wall -Wextra -Werror -Ibindings/c bindings/c/rt_publisher_example.c $(BINDINGS_C)/librt_publisher.a $$(pkg-config --libs libzmq) -lm -o $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

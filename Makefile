# rt-decoder: the two commands a newcomer needs are `make demo` and `make test`.
# Both bootstrap .venv through the idempotent `venv` target.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench clean models

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev,train]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/rt-decoder demo

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) -m benchmarks.deconv --out bench-deconv.json
	$(PY) -m benchmarks.latency --out bench-latency.json
	$(PY) -m benchmarks.encoder --out bench-encoder.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

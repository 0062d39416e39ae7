# Two commands on a fresh machine:  `make demo` (install + main job)  and  `make test` (install + tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel by default; a GPU user: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0

.PHONY: install demo test bench clean

$(BIN)/torchdecoupled: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

install: $(BIN)/torchdecoupled

demo: install
	$(BIN)/torchdecoupled compare --methods bp,fdg --stages 3 --dataset mnist1d --out runs/demo

test: install
	$(BIN)/python -m pytest -q

# BENCHMARKS.md: quick (< 5 min) by default; `make bench FULL=1` re-measures everything (about half an hour)
bench: install
	$(BIN)/python benchmarks/report.py $(if $(FULL),--full,)

clean:
	rm -rf $(VENV) runs

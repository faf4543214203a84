# Every target sets itself up on a fresh machine: virtual environment, install, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch first and pinned: the registry's newest torch pulls several GB of CUDA packages.
TORCH  ?= torch==2.13.0

.PHONY: venv test test-slow demo configs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

demo: $(STAMP)
	$(VENV)/bin/mlpmem demo

configs: $(STAMP)
	$(PY) -m mlpmem_lightning.configs --out experiments

clean:
	rm -rf $(VENV) runs

# Every target sets itself up on a fresh machine: virtual environment, install, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch first and pinned: the registry's newest torch pulls several GB of CUDA packages.
TORCH  ?= torch==2.13.0

.PHONY: venv test test-unit test-slow demo configs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-unit: $(STAMP)
	$(PY) -m pytest -q -m 'unit and not slow'

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

demo: $(STAMP)
	$(VENV)/bin/mlpmem demo

configs: $(STAMP)
	$(PY) -m mlpmem_lightning.cli.configs --out experiments

clean:
	rm -rf $(VENV) runs

# Wheels for an air-gapped GPU machine that already has torch, pytorch-lightning, transformers, tokenizers,
# pandas, scipy, matplotlib and pyarrow (DESIGN.md, Machines). Install there with
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
GPU_PYTHON   ?= 3.12
GPU_PLATFORM ?= --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any
GPU_WHEELS   ?= lightning==2.6.6 lightning-utilities==0.15.3 jsonargparse==4.53.0 docstring-parser typeshed-client datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 fsspec==2026.9.0 faiss-cpu==1.15.1 optuna==5.0.0 alembic sqlalchemy mako colorlog greenlet gguf==0.19.0
wheels:
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
	  $(GPU_PLATFORM) -d .whl $(GPU_WHEELS)
	ls -la .whl

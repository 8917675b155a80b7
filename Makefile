# Every target that needs the environment depends on it, so each works on a fresh clone by itself.
PYTHON_VERSION ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TRAIN := $(PY) train.py
HOST ?= 127.0.0.1
PORT ?= 5000
STORE := sqlite:///$(CURDIR)/outputs/mlflow.db
ARGS ?=

.PHONY: install test test-slow demo train ui clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_VERSION) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

# The main job on the embedded data: BN vs no BN on mnist_mini, then the comparison read back from MLflow.
demo: $(STAMP)
	$(TRAIN) -m experiment=mnist_fig1 data=mnist_mini norm=bn,none trainer.max_steps=3000 \
		trainer.enable_progress_bar=false sweep_name=demo $(ARGS)
	$(PY) -m bnrepro.report.summary demo

train: $(STAMP)
	$(TRAIN) $(ARGS)

ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri $(STORE) --host $(HOST) --port $(PORT)

clean:
	rm -rf outputs/runs outputs/multirun outputs/reports outputs/bench outputs/mlflow.db outputs/mlartifacts

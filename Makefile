# Every target that needs the environment depends on it, so each works on a fresh clone by itself.
PYTHON_VERSION ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TRAIN := $(PY) train.py
# One intra-op thread per process for the small nets (MNIST MLP, the CPU proxy): they gain nothing from a
# second one, and on a 2-core machine shared with other work two threads fall into an OpenMP slowdown of up to 10x.
ONE_THREAD := OMP_NUM_THREADS=1
HOST ?= 127.0.0.1
PORT ?= 5000
ARGS ?=
DATA ?= mnist
SEEDS ?= 0,1,2
SWEEP ?= mnist_fig1
IMAGENET_DIR ?= data/imagenet
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
MNIST_TEST_DIR ?= ../shared/data/mnist
# data.data_dir=... only when a directory differs from its config default (keeps run names short)
IMAGENET_DIR_ARG := $(if $(filter-out data/imagenet,$(IMAGENET_DIR)),data.data_dir=$(IMAGENET_DIR))
FASHION_MNIST_DIR_ARG := $(if $(filter-out /usr/share/datasets/fashion-mnist,$(FASHION_MNIST_DIR)),data.data_dir=$(FASHION_MNIST_DIR))
MNIST_TEST_DIR_ARG := $(if $(filter-out ../shared/data/mnist,$(MNIST_TEST_DIR)),data.test_dir=$(MNIST_TEST_DIR))

.PHONY: help install test test-slow lint demo train ui ui-check clean reproduce-mnist reproduce-mnist-fig1 \
	reproduce-mnist-grid reproduce-mnist-headline reproduce-fashion report reproduce-imagenet reproduce-proxy \
	reproduce results bench-inception bench

install: $(STAMP) ## Create .venv and install the package with its dev extras (again when pyproject.toml changes)

# Re-runs only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_VERSION) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP) ## The fast test suite (what CI runs after lint)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP) ## The slow end-to-end tests (pytest -m slow)
	$(PY) -m pytest -m slow -q

# Fix what it reports with `.venv/bin/ruff check --fix` and `.venv/bin/ruff format` (settings: pyproject.toml).
lint: $(STAMP) ## ruff: lint, and check the formatting, of the whole tree
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Every target with a `## ` description on its line, in the order of this file.
help: ## List the targets, one line each
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-zA-Z_-]+):.*## /\1\t/' \
		| awk -F '\t' '{printf "  %-26s %s\n", $$1, $$2}'

# The main job on the embedded data: BN vs no BN on mnist_mini, then the comparison read back from MLflow.
demo: $(STAMP) ## BN vs no BN on the bundled MNIST digits, then the comparison from MLflow
	$(ONE_THREAD) $(TRAIN) -m experiment=mnist_fig1 data=mnist_mini norm=bn,none trainer.max_steps=3000 \
		sweep_name=demo $(ARGS)
	$(PY) -m bnrepro.report.summary demo

train: $(STAMP) ## One run: train.py with the overrides in ARGS
	$(TRAIN) $(ARGS)

# Prints the link to each experiment's runs list and to the latest sweep's parent run first.
ui: $(STAMP) ## The MLflow UI over the store (MLFLOW_TRACKING_URI, else outputs/mlflow.db) on HOST:PORT (127.0.0.1:5000)
	$(PY) -m bnrepro.tracking.ui ui --host $(HOST) --port $(PORT)

# A small sweep and its report, `make ui` over them on a free port, and the runs list, the parent run and
# report.html loaded in headless Chromium (apt-get install chromium): tests/test_report_ui.py, a few minutes.
ui-check: $(STAMP) ## The MLflow UI checked in a real browser (headless Chromium)
	$(PY) -m pytest -m slow -q tests/test_report_ui.py

# An MLflow tracking server over the same SQLite store (MLFLOW_TRACKING_URI, else outputs/mlflow.db), for
# many parallel writers (e.g. a joblib or submitit sweep): one process owns the database file, artifacts go
# beside it. Binds to $(HOST) (127.0.0.1: this machine only); point jobs at it with
# MLFLOW_TRACKING_URI=http://$(HOST):$(PORT). See README "When things go wrong".
.PHONY: tracking-server
tracking-server: $(STAMP) ## An MLflow tracking server over the same store, for many parallel writers
	$(PY) -m bnrepro.tracking.ui server --host $(HOST) --port $(PORT)

clean: ## Delete runs, sweeps, reports, benchmarks, the MLflow store and caches under outputs/
	rm -rf outputs/runs outputs/multirun outputs/reports outputs/bench outputs/mlflow.db outputs/mlflow.db.lock outputs/mlartifacts outputs/cache

# The paper's Figure 1 experiment as one sweep (sweeps/mnist_fig1.yaml): BN vs no BN, seeds $(SEEDS), 50,000 steps
# at batch 60. Full MNIST by default; offline: `make reproduce-mnist-fig1 DATA=mnist_mini`; more overrides in ARGS.
reproduce-mnist-fig1: $(STAMP) ## Figure 1 (Sec. 4.1) as one sweep: BN vs no BN, seeds SEEDS, on DATA (mnist; offline: mnist_mini)
	$(ONE_THREAD) $(TRAIN) -m -cd sweeps -cn mnist_fig1 data=$(DATA) seed=$(SEEDS) $(ARGS)

# The pre-registered reproductions of issue 15 (protocols/<sweep>.yaml, committed before their runs): each
# sweep in parallel worker processes (one per core, one intra-op thread each), then its report, which checks
# every run against the protocol. Wall times on the 2-core development machine: docs/results.md.
PARALLEL := hydra/launcher=parallel
# The two pre-registered MNIST reproductions: the headline replication, then the learning-rate grid (~45 min here).
reproduce-mnist: reproduce-mnist-headline reproduce-mnist-grid ## Figure 1's pre-registered protocols: headline, then the lr grid

reproduce-mnist-grid: $(STAMP) ## Figure 1 at 5 learning rates x {BN, none} x 3 seeds, official 10k test digits
	$(ONE_THREAD) $(TRAIN) -m -cd sweeps -cn mnist_lr_grid $(PARALLEL) $(MNIST_TEST_DIR_ARG) $(ARGS)
	$(PY) -m bnrepro.report mnist_lr_grid

reproduce-mnist-headline: $(STAMP) ## Figure 1 at lr 0.1 on 5 fresh seeds, official 10k test digits
	$(ONE_THREAD) $(TRAIN) -m -cd sweeps -cn mnist_headline $(PARALLEL) $(MNIST_TEST_DIR_ARG) $(ARGS)
	$(PY) -m bnrepro.report mnist_headline

reproduce-fashion: $(STAMP) ## Figure 1's net and protocol on Fashion-MNIST (60k/10k), 3 seeds
	$(ONE_THREAD) $(TRAIN) -m -cd sweeps -cn fashion_mnist_fig1 $(PARALLEL) $(FASHION_MNIST_DIR_ARG) $(ARGS)
	$(PY) -m bnrepro.report fashion_mnist_fig1

# Figure 1(a,b,c), the comparison table and every claim's verdict for a sweep (default: the latest
# mnist_fig1), written to outputs/reports/<sweep>/ and logged to the sweep's parent MLflow run.
report: $(STAMP) ## Figures, tables and claim verdicts of the sweep SWEEP (mnist_fig1)
	$(PY) -m bnrepro.report $(SWEEP)

# The paper's Figure 3 on ImageNet (sweeps/imagenet_fig3.yaml): the five configurations and the paper's two
# extra runs, one GPU per job, batch 32 per GPU, ImageNet in $(IMAGENET_DIR)/{train,val}/<wnid>/*.JPEG.
# Then `make report SWEEP=imagenet_fig3`. Cost: README ("Figure 3 on ImageNet"); more overrides in ARGS.
reproduce-imagenet: $(STAMP) ## Figure 3 (Sec. 4.2) on ImageNet in IMAGENET_DIR, one GPU per job
	$(TRAIN) -m -cd sweeps -cn imagenet_fig3 $(IMAGENET_DIR_ARG) $(ARGS)

# The CPU proxy of Figure 3 and Sec. 4.2.1's ablations (sweeps/inception_proxy.yaml, pre-registered in
# protocols/inception_proxy.yaml): 12 configurations x 3 seeds of a width-0.125 BN-Inception on Fashion-MNIST
# at 32x32 (apt-get install dataset-fashion-mnist), two jobs at a time, one intra-op thread each; then its report.
reproduce-proxy: $(STAMP) ## Figure 3's CPU proxy + Sec. 4.2.1 ablations: BN-Inception at width 0.125 on Fashion-MNIST
	$(ONE_THREAD) $(TRAIN) -m -cd sweeps -cn inception_proxy $(PARALLEL) $(FASHION_MNIST_DIR_ARG) $(ARGS)
	$(PY) -m bnrepro.report inception_proxy

# Every pre-registered reproduction this machine can run (protocols/), then docs/results.md from their runs:
# the MNIST headline and learning-rate grid (when the official MNIST test split is in MNIST_TEST_DIR),
# Fashion-MNIST and the proxy (when Fashion-MNIST is installed), ImageNet (when $(IMAGENET_DIR) holds train/
# and val/ and a CUDA GPU is present). Says what it skipped and why; exits non-zero if a reproduction failed.
# Measured here: 75 min of sweeps on 2 CPU cores (34.5 + 9.3 + 5.2 + 26.3; per reproduction: docs/results.md).
reproduce: $(STAMP) ## Every pre-registered reproduction this machine can run, then docs/results.md
	@status=0; skipped=""; \
	if ls $(MNIST_TEST_DIR)/t10k-images-idx3-ubyte* >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory reproduce-mnist || status=1; \
	else skipped="$$skipped\n  mnist: the official MNIST test split is not in $(MNIST_TEST_DIR) (set MNIST_TEST_DIR=...)"; fi; \
	if ls $(FASHION_MNIST_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory reproduce-fashion reproduce-proxy || status=1; \
	else skipped="$$skipped\n  fashion, proxy: Fashion-MNIST is not in $(FASHION_MNIST_DIR) (apt-get install dataset-fashion-mnist, or FASHION_MNIST_DIR=...)"; fi; \
	if ! { test -d $(IMAGENET_DIR)/train && test -d $(IMAGENET_DIR)/val; }; then \
		skipped="$$skipped\n  imagenet: no ImageNet in $(IMAGENET_DIR) (expected train/ and val/ class folders; set IMAGENET_DIR=...)"; \
	elif ! $(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		skipped="$$skipped\n  imagenet: no CUDA GPU on this machine (Figure 3 at full scale needs GPUs)"; \
	else $(MAKE) --no-print-directory reproduce-imagenet && $(MAKE) --no-print-directory report SWEEP=imagenet_fig3 || status=1; fi; \
	$(MAKE) --no-print-directory results || status=1; \
	if [ -n "$$skipped" ]; then printf "reproduce: skipped$$skipped\n"; else echo "reproduce: skipped nothing"; fi; \
	if [ $$status -ne 0 ]; then echo "reproduce: a reproduction or its report failed (see above)"; fi; \
	exit $$status

# docs/results.md (and docs/results/<sweep>/*.png) from the tracked runs of every protocol in protocols/:
# each sweep's report, its deviations from the protocol, wall time, figures and verdicts.
results: $(STAMP) ## docs/results.md from the tracked runs of every pre-registered protocol
	$(PY) -m bnrepro.report.results

# Training images/s of BN-Inception on fake ImageNet (CUDA: bf16, channels_last, batch 256; CPU: batch 8,
# a few steps), the CPU proxy's step time, and the real-JPEG loader's images/s: outputs/bench/inception.json.
bench-inception: $(STAMP) ## BN-Inception training throughput, proxy step time, JPEG loader speed
	$(PY) benchmarks/bench_inception.py $(ARGS)

# The framework against a hand-written PyTorch loop on mnist_fig1: per-step time ratio (norm=bn and none),
# MLflow overhead, start-up to the first step, and a 4-job sweep serial vs parallel (joblib); a table, and
# JSON in outputs/bench/ (benchmarks/README.md). Both sides run with the thread setting of the reproductions.
# ~13 min on 2 cores; QUICK=1: fewer steps (~2 min); options in ARGS (see --help).
bench: $(STAMP) ## Framework vs hand-written loop per step, MLflow overhead, start-up, sweeps (QUICK=1)
	$(ONE_THREAD) $(PY) benchmarks/bench_mnist.py $(if $(QUICK),--quick) $(ARGS)

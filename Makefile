# make demo  -> set up, build the offline demo cache, serve the dashboard on 127.0.0.1:8501
# make test  -> set up (incl. Debian's chromium for the browser test), run the test suite
# make test-fast -> the edit-run loop: no demo build, no browser, nothing marked slow (under a minute)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8501
CACHE  ?= cache
CACHE_KINDS := features projections evaluations checkpoints layers anomalies attention splits
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: setup demo serve test test-fast chromium bench clean-cache

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0   # the local CPU build; an unpinned torch pulls GBs of CUDA
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $@

demo: setup
	$(PY) -m core demo
	$(MAKE) serve

serve: setup
	$(VENV)/bin/streamlit run dashboard/app.py --server.port $(PORT)

chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: setup chromium
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not demo and not browser"

bench: setup
	$(PY) bench/render.py
	$(PY) bench/projection.py
	$(PY) bench/dashboard.py

clean-cache:  # everything core computed (CACHE=DIR for another cache folder)
	rm -rf $(addprefix $(or $(CACHE),cache)/,$(CACHE_KINDS))

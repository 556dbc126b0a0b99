# Two commands for a fresh machine with Python >= 3.10 and pip:
#   make book   set up .venv if needed, execute every chapter into build/, build the HTML
#               book in build/html/ and check its pages in Chromium
#   make test   set up .venv if needed, then run the unit tests, execute every notebook and
#               drive the widgets in JupyterLab (the browser tests skip without Chromium)
# Bring your own environment with PYTHON=/path/to/python (it must have pip).

VENV   := .venv
STAMP  := $(VENV)/.installed

ifeq ($(origin PYTHON), undefined)
PY     := $(VENV)/bin/python
SETUP  := $(STAMP)
else
PY     := $(PYTHON)
SETUP  := setup-own-env
endif

# The quick-mode switch the chapters read; CI sets CI=true, which implies it.
QUICK ?=
ifeq ($(QUICK),1)
export SPPNET_QUICK := 1
endif

.PHONY: setup setup-own-env book test unit notebooks browser lab bench data clean

setup: $(SETUP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[dev]'
	touch $@

setup-own-env:
	@$(PY) -c "import sppnet_lite.cli, nbval, hypothesis, jupyter_book, playwright" 2>/dev/null || $(PY) -m pip install -e '.[dev]'

book: $(SETUP)
	$(PY) -m sppnet_lite.cli book $(if $(filter 1,$(QUICK)),--quick,)
	SPPNET_BOOK_HTML=$${SPPNET_BUILD:-build}/html $(PY) -m pytest -q -rs $(BROWSER_TESTS) -k html_book

# Tests always execute the notebooks in quick mode (what CI runs). The browser tests come
# last: the widgets' setup cells then read the caches the notebooks have just filled.
BROWSER_TESTS := -m browser tests/test_browser.py
NOT_BROWSER   := -m "not browser" --ignore=tests/test_browser.py

test: $(SETUP)
	SPPNET_QUICK=1 $(PY) -m pytest -q $(NOT_BROWSER) tests
	SPPNET_QUICK=1 $(PY) -m pytest -q --nbval-lax --nbval-current-env --nbval-cell-timeout=900 chapters
	SPPNET_QUICK=1 $(PY) -m pytest -q -rs $(BROWSER_TESTS)

unit: $(SETUP)
	$(PY) -m pytest -q $(NOT_BROWSER) tests

notebooks: $(SETUP)
	SPPNET_QUICK=1 $(PY) -m pytest -q --nbval-lax --nbval-current-env --nbval-cell-timeout=900 chapters

browser: $(SETUP)
	SPPNET_QUICK=1 $(PY) -m pytest -q -rs $(BROWSER_TESTS)

lab: $(SETUP)
	$(PY) -m jupyter lab chapters

bench: $(SETUP)
	$(PY) benchmarks/bench_spp.py

data: $(SETUP)
	$(PY) -m sppnet_lite.cli data make $(if $(filter 1,$(QUICK)),--quick,)

clean:
	rm -rf build

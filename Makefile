# `make run`: install and run the Space (sandbox mode). `make test`: install and run the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

# The gate's own tests also run on Python 3.10 (gradio 6's oldest Python; a seller's Space may
# still run on it). PYTHON310 names the interpreter; left empty, it is looked for (see below).
PYTHON310 ?=
VENV310   ?= .venv310
PY310     := $(VENV310)/bin/python

# What runs on Python 3.10 too: the code copied into other people's projects (gate/, buyer/), less the buyer's
# tests against a running Space (those need the model's packages).
PY310_TESTS := tests/gate tests/buyer/test_units.py tests/buyer/test_route.py tests/buyer/test_codes.py

# `make test-fast`: the suite less what starts browsers, kills servers, floods or fuzzes.
FAST_MARKERS := not slow and not browser and not crash and not load and not hostile and not fault

.PHONY: run test test-fast test-py310 bench install install-dev install-py310

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt $(VENV)/bin/activate
	$(PIP) install -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt $(VENV)/.installed
	$(PIP) install -r requirements-dev.txt
	touch $@

# A Python 3.10: $(PYTHON310) if set, else pyenv's newest 3.10.x, else python3.10 on PATH.
# Debian bookworm packages no 3.10 and pyenv cannot download one here: no fallback past these.
$(VENV310)/bin/activate:
	@py="$(PYTHON310)"; \
	if [ -z "$$py" ]; then \
	  root="$${PYENV_ROOT:-$$HOME/.pyenv}"; \
	  if command -v pyenv >/dev/null 2>&1; then root="$$(pyenv root)"; fi; \
	  for cand in $$(ls -d "$$root"/versions/3.10*/bin/python3.10 2>/dev/null | sort -V -r) \
	              $$(command -v python3.10) /usr/local/bin/python3.10 /usr/bin/python3.10; do \
	    if "$$cand" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; then \
	      py="$$cand"; break; \
	    fi; \
	  done; \
	fi; \
	if [ -n "$(PYTHON310)" ] && ! "$$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; then \
	  echo "make: PYTHON310='$(PYTHON310)' is not a Python 3.10 interpreter." >&2; exit 1; \
	fi; \
	if [ -z "$$py" ]; then \
	  echo "make: no Python 3.10 found (looked in pyenv's versions/3.10*, then for python3.10 on PATH)." >&2; \
	  echo "make: the gate's tests run on 3.10 too: install one (pyenv install 3.10) or pass PYTHON310=/path/to/python3.10." >&2; \
	  exit 1; \
	fi; \
	echo "$(VENV310): $$py ($$("$$py" -c 'import platform; print(platform.python_version())'))"; \
	"$$py" -m venv $(VENV310)
	$(VENV310)/bin/pip install --quiet --upgrade pip

# requirements-gate.txt copies its lines from requirements*.txt: refuse drift (another gradio on 3.10).
$(VENV310)/.installed: requirements-gate.txt requirements.txt requirements-dev.txt $(VENV310)/bin/activate
	@drift=$$(grep -vE '^[[:space:]]*(#|$$)' requirements-gate.txt | grep -vxF -f requirements.txt | grep -vxF -f requirements-dev.txt); \
	if [ -n "$$drift" ]; then \
	  echo "make: requirements-gate.txt lines not found verbatim in requirements.txt or requirements-dev.txt:" >&2; \
	  echo "$$drift" >&2; exit 1; \
	fi
	$(VENV310)/bin/pip install -r requirements-gate.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev
install-py310: $(VENV310)/.installed

# exec: the app is make's own child, so Ctrl-C or SIGTERM reaches it directly; it stops cleanly and exits 0
# (the gate settles, temporary data is removed), so make reports no failure.
run: install
	exec $(PY) app.py

# pytest exits 5 when it collected no test: that is a failure here, never a pass.
# $(call pytest,PYTHON,ARGS) runs pytest and leaves its status in rc.
pytest = $(1) -m pytest $(2); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make $@: pytest collected no tests" >&2; rc=1; fi

# The whole suite on $(PYTHON) (3.11, as the Space runs; PYTEST_ARGS narrows it), then the gate's
# tests on Python 3.10. Both venvs are built first, so a missing 3.10 fails before the long run;
# the 3.10 run happens even when the first failed, and either failing fails `make test`.
test: install-dev install-py310
	@$(call pytest,$(PY),$(PYTEST_ARGS)); rc311=$$rc; \
	echo "make test: the gate's and the buyer's tests on Python 3.10 ($(VENV310))"; \
	$(call pytest,$(PY310),$(PY310_TESTS)); rc310=$$rc; \
	if [ $$rc311 -ne 0 ]; then echo "make test: FAILED: the suite on $$($(PY) -V) (exit $$rc311); see above" >&2; fi; \
	if [ $$rc310 -ne 0 ]; then echo "make test: FAILED: $(PY310_TESTS) on $$($(PY310) -V) (exit $$rc310)" >&2; fi; \
	[ $$rc311 -eq 0 ] && [ $$rc310 -eq 0 ]

# The gate's tests on Python 3.10 alone.
test-py310: install-py310
	@$(call pytest,$(PY310),$(PY310_TESTS) $(PYTEST_ARGS)); exit $$rc

# A quick loop while developing: the suite without the slow, browser, crash, load, hostile and fault tests.
test-fast: install-dev
	@$(call pytest,$(PY),-m "$(FAST_MARKERS)" $(PYTEST_ARGS)); exit $$rc

bench: install-dev
	$(PY) -m bench --short

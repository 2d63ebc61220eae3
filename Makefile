# The two commands a user types: `make run` and `make test`. Both set up ./.venv first.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
WORKDIR ?= workdir
# CPU installs pin torch to the local CPU build (see constraints-cpu.txt); GPU clusters skip this.
# uv installs what pip would (same indexes and constraints, .ci/uv_flags.py) in ~30 s instead of
# ~100 s; pip takes over if uv fails. --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE
# is set (this machine), a venv without .pyc files compiles every module in every process (imports
# took 15 s instead of 4 s).
PIP_CONSTRAINTS ?= -c constraints-cpu.txt

.PHONY: setup run test lint bench clean

setup: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q uv
	.venv/bin/uv pip install -q --compile-bytecode --python $(PY) $$($(PY) .ci/uv_flags.py) $(PIP_CONSTRAINTS) -e ".[dev]" \
		|| { echo "uv failed; installing with pip"; $(PY) -m pip install -q --upgrade pip \
			&& $(PY) -m pip install -q $(PIP_CONSTRAINTS) -e ".[dev]"; }
	touch $(VENV_STAMP)

run: setup
	.venv/bin/unlearn demo --workdir $(WORKDIR)

test: setup
	$(PY) -m ruff check unlearn_core pipelines tests bench
	$(PY) -m ruff format --check unlearn_core pipelines tests bench
	$(PY) -m pytest -q -ra --durations=25 tests

lint: setup
	$(PY) -m ruff check unlearn_core pipelines tests bench
	$(PY) -m ruff format --check unlearn_core pipelines tests bench

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(WORKDIR) .pytest_cache

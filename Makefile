# lensray's set-up: every target creates/updates the virtual environment it needs, and is a
# no-op re-install when pyproject.toml has not changed (the stamp file below).
#   make demo   the main job on its embedded default: `lensray select` on the offline zoo demo
#   make test   run the test suite (what CI runs, via .ci/run)
#   make bench  the benchmarks (predictor on recorded curves, the predictor suite, fit speed,
#               replay sweeps, scale, probe throughput, fingerprint cost, routing, propose-and-aggregate), then both
#               demos selected and verified at
#               T (out/verify-*.json)
#   make docs   docs/benchmarks.md from the JSON `make bench` writes to out/bench-*.json and
#               out/verify-*.json (it runs nothing else: run `make bench` first)
SHELL := bash
.SHELLFLAGS := -o pipefail -ec
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 is a CPU build on this machine's disk; elsewhere point TORCH at the build you want
# (e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cpu").
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.lensray-installed
# pip prints one warning per missing local mirror folder; they are noise, not errors.
QUIET := 2>&1 | { grep -v -e "^WARNING: Location 'file:" || true; }

.PHONY: venv demo test bench docs clean
venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip $(QUIET)
	$(PY) -m pip install -q $(TORCH) $(QUIET)
	$(PY) -m pip install -q -e '.[dev]' $(QUIET)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lensray select --resume

bench: $(STAMP)
	$(VENV)/bin/lensray bench curves --json out/bench-curves.json
	$(VENV)/bin/lensray bench curves --suite --json out/bench-suite.json
	$(VENV)/bin/lensray bench select --json out/bench-select.json
	$(VENV)/bin/lensray bench scale --candidates 10000 --json out/bench-scale.json
	$(VENV)/bin/lensray bench probe --size 32 64 128 256 --json out/bench-probe.json
	$(VENV)/bin/lensray bench phylo --models 100 --json out/bench-phylo.json
	$(VENV)/bin/lensray zoo build
	$(VENV)/bin/lensray select configs/route-demo.yaml --resume --quiet
	$(VENV)/bin/lensray bench route configs/route-demo.yaml --json out/bench-route.json
	$(VENV)/bin/lensray select configs/aft-aspects.yaml --resume --quiet
	$(VENV)/bin/lensray select configs/aft-cipher.yaml --resume --quiet
	$(VENV)/bin/lensray bench aggregate configs/aft-aspects.yaml configs/aft-cipher.yaml --json out/bench-aggregate.json
	$(VENV)/bin/lensray select --resume --quiet
	$(VENV)/bin/lensray verify --json out/verify-demo.json
	$(VENV)/bin/lensray select configs/sde-demo.yaml --resume --quiet
	$(VENV)/bin/lensray verify configs/sde-demo.yaml --json out/verify-sde-demo.json

docs: $(STAMP)
	$(PY) -m lensray.bench.docs --out docs/benchmarks.md

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) out

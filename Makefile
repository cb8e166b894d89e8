# ganforge: `make serve` runs the service on models/; `make test` installs what the tests need and runs them.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
PORT   ?= 3000
# pip reads this machine's constraint file (torch pins) from /etc/xdg/pip when present

.PHONY: serve test test-fast browser prometheus replicas-deps data models bench build clean help soak gpu-check fp16
.PHONY: container container-gpu container-test container-engine

help:
	@echo "make serve    run the service on the models in models/ (http://127.0.0.1:$(PORT))"
	@echo "make test     create $(VENV), install everything the tests need, run pytest"
	@echo "make browser  apt-get install chromium for tests/service/test_ui.py (root; a no-op when it is there)"
	@echo "make prometheus  apt-get install prometheus (+ promtool) for the real scrape test (root; a no-op when there)"
	@echo "make replicas-deps  apt-get install postgresql haproxy for the replicas tests (root; a no-op when there)"
	@echo "make data     build the default datasets from Debian packages into data/"
	@echo "make models   retrain, export and evaluate the whole default zoo (hours on a CPU)"
	@echo "make build    bentoml build (the Bento: service + models, no torch)"
	@echo "make container      the CPU service image (docker or podman); container-gpu: the CUDA 13 one"
	@echo "make container-test build the CPU image, run it, call every endpoint, stop and remove it"
	@echo "make bench    benchmarks on a quiet machine (~23 min on 2 cores) -> bench/results/"
	@echo "make bench-quick  the same path on small inputs (~1-2 min): a check, not a measurement"
	@echo "make fp16     make the fp16 variants (not kept in git) from the fp32 graphs, byte-identical to the cards"
	@echo "make gpu-check  the CUDA path end to end where a GPU is usable (< 8 min; JSON in bench/results/); elsewhere says so"
	@echo "make soak     load + fault runs on a real server, loopback only (~3 min) -> soak/results/"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# serving only: bentoml, onnxruntime, numpy, pillow (no torch)
$(VENV)/.stamp-serve: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e .
	touch $@

# training + tests: adds torch, onnx, pytest, ...
$(VENV)/.stamp-dev: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[train,test]'
	touch $@ $(VENV)/.stamp-serve

serve: $(VENV)/.stamp-serve
	$(VENV)/bin/bentoml serve . --port $(PORT)

# $(call apt_install,PACKAGE,WHAT SKIPS WITHOUT IT): apt-get install as root; without apt-get or root it
# only says so, and a failed install never fails the build (the tests that need the package skip, saying why).
define apt_install
if ! command -v apt-get >/dev/null 2>&1; then \
  echo "make $@: no apt-get here; install $(1) by hand, or $(2) skips"; \
elif [ "$$(id -u)" != 0 ]; then \
  echo "make $@: not root; run 'sudo apt-get install $(1)', or $(2) skips"; \
else \
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null) \
    || echo "make $@: apt-get install $(1) failed; $(2) skips"; \
fi
endef

# Debian's chromium for tests/service/test_ui.py (Playwright drives it; `playwright install` cannot
# download browsers here).
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ -x "$(CHROMIUM)" ]; then :; else $(call apt_install,chromium,tests/service/test_ui.py); fi

# Debian's prometheus (and promtool) for tests/service/test_metrics_scrape.py and tests/deploy/test_deploy.py's rule checks.
PROMETHEUS ?= /usr/bin/prometheus
prometheus:
	@if [ -x "$(PROMETHEUS)" ] && command -v promtool >/dev/null 2>&1; then :; \
	else $(call apt_install,prometheus,the scrape test); fi

# Debian's postgresql (a throwaway cluster per test: testkit/postgres.py) and haproxy (testkit/haproxy.py) for
# tests/service/test_replicas.py and test_jobs_postgres.py: replicas sharing a PostgreSQL job store behind a balancer.
PG_INITDB ?= $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))
replicas-deps:
	@if [ -n "$(PG_INITDB)" ] && command -v haproxy >/dev/null 2>&1; then :; \
	else $(call apt_install,postgresql haproxy,tests/service/test_replicas.py); fi

# the layers first (pyproject [tool.importlinter]: contract < core < training | service < testkit < bench | soak | client)
test: $(VENV)/.stamp-dev browser prometheus replicas-deps
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

test-fast: $(VENV)/.stamp-dev
	$(PY) -m pytest -m "not slow"

data: $(VENV)/.stamp-dev
	$(PY) -m training prepare fashion-mnist
	$(PY) -m training prepare photos

# ratios measured side by side in one run; see bench/README.md. BENCH_ARGS="--only compute,serving" etc.
bench: $(VENV)/.stamp-dev
	$(PY) -m bench $(BENCH_ARGS)

# CUDA provider really used, fp16 variants, batching on, /upscale and /translate images/s (bench/gpu_check.py);
# on a machine without a usable NVIDIA GPU it prints why and exits 0.
gpu-check: fp16
	$(PY) -m bench.gpu_check $(GPU_CHECK_ARGS)

# The fp16 variants the cards list as `built` (not in git: models/ stays small), remade byte for byte from
# the fp32 graphs; the GPU image and gpu-check run them (the CPU path runs fp32 / bf16 and needs none).
fp16: $(VENV)/.stamp-dev
	$(PY) -m training fp16 --models $(or $(MODELS),models)

bench-quick: $(VENV)/.stamp-dev
	$(PY) -m bench --quick $(BENCH_ARGS)

# Bounded load and fault runs (issue 7) against `bentoml serve` on 127.0.0.1, on a temporary copy of
# $(GANFORGE_MODELS_DIR) (default models/). SOAK_ARGS="--fixtures" serves the tests' tiny models;
# "--clients 16 --duration 60 --kill-duration 30 --burst 200" are the defaults. See soak/__main__.py.
soak: $(VENV)/.stamp-dev
	$(PY) -m soak $(SOAK_ARGS)

# The default zoo from scratch: each model is trained, exported into models/ and evaluated on its
# held-out split with the committed configs, then draws docs/samples/ (about 3 hours on a 2-core CPU;
# runs/<name>/ can --resume). Export writes each fp16 variant too; git keeps only the fp32 graphs (see fp16).
ZOO_TRAIN = fashion sneaker2boot srresnet-x4 colorize
models: data
	for name in $(ZOO_TRAIN); do \
	  $(PY) -m training train training/configs/$$name.yaml --resume && \
	  $(PY) -m training export runs/$$name --name $$name && \
	  $(PY) -m training eval $$name || exit 1; \
	done
	$(PY) -m training train training/configs/srgan-x4.yaml --resume
	$(PY) -m training export runs/srgan-x4 --name srgan-x4
	$(PY) -m training eval srgan-x4
	$(PY) -m training sheets

build: $(VENV)/.stamp-serve
	$(VENV)/bin/bentoml build .

# The service image from the Bento (deploy/container.py: docker if its daemon answers, else podman).
# BASE_IMAGE= any Debian-family Python 3.11 image; unset: BentoML's default where a registry answers,
# else one made here from Debian packages. CA_BUNDLE: a CA file pip/uv must trust during the build
# (behind a TLS-intercepting proxy); the host's bundle by default, CA_BUNDLE= for none.
MODELS    ?= models
IMAGE     ?=
CA_BUNDLE ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
container: $(VENV)/.stamp-serve
container-gpu: fp16
container container-gpu:
	$(PY) deploy/container.py build --variant $(if $(filter container-gpu,$@),gpu,cpu) --models $(MODELS) \
	  $(if $(IMAGE),--image $(IMAGE)) $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) \
	  $(if $(CA_BUNDLE),--ca-bundle $(CA_BUNDLE)) $(if $(ENGINE),--engine $(ENGINE))

# Builds the CPU image (on models/, or fixture models when it is empty), runs it on 127.0.0.1, checks
# every endpoint against the in-process service, /metrics, logs and SIGTERM, then removes it; then plays
# deploy/kubernetes.yaml on it with `podman kube play` (a throwaway PostgreSQL, the README's curl lines).
container-test: $(VENV)/.stamp-dev container-engine
	GANFORGE_CONTAINER_TEST=1 GANFORGE_CA_BUNDLE=$(CA_BUNDLE) GANFORGE_CONTAINER_ENGINE=$(ENGINE) \
	  $(PY) -m pytest tests/deploy/test_container.py tests/deploy/test_kube_play.py -rs -s --timeout=1800

# podman + runc + debootstrap from apt when no engine works (root; a no-op otherwise): deploy/podman-setup.sh
container-engine:
	@deploy/podman-setup.sh

clean:
	rm -rf build dist *.egg-info .pytest_cache

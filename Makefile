# Two entry points matter (README Quickstart): `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
APT_STAMP := .venv-apt-done
# Debian packages the tests and the synthetic corpus need (TTS engines, codecs, prometheus, compose,
# and headless Chromium + its WebDriver for the try-it page's browser test).
APT_PACKAGES := espeak-ng sox libsox-fmt-all ffmpeg libsndfile1 festival flite festvox-kallpc16k \
	festvox-kdlpc16k festvox-us-slt-hts fortunes wordnet-base bible-kjv bible-kjv-text prometheus docker-compose \
	chromium chromium-driver
# Only for `make test-image` (not part of `make setup`): podman with runc (crun refuses this kind
# of kernel's hybrid cgroups), netavark + aardvark-dns for the compose network's names, iptables
# (netavark's firewall driver: without it every published port fails with "netavark: No such file
# or directory", and Debian's netavark does not depend on it), mmdebstrap for the local Debian 12 base. podman-compose comes from PyPI (the `image` extra): Debian 12's
# 1.0.3 ignores compose profiles and network aliases.
IMAGE_APT_PACKAGES := podman runc netavark aardvark-dns iptables mmdebstrap
IMAGE_STAMP := $(VENV)/.installed-image
PORT ?= 8000
MODEL_DIR ?= models/default

.PHONY: setup setup-apt run test test-slow test-image lint lint-deploy bench demo-model demo-publish clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,synth]'
	touch $(STAMP)

setup-apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

setup: setup-apt $(STAMP)

run: $(STAMP)
	$(VENV)/bin/hubert-lstm serve --model-dir $(MODEL_DIR) --port $(PORT)

test: setup
	$(VENV)/bin/pytest -q

test-slow: setup
	$(VENV)/bin/pytest -q -m slow

$(IMAGE_STAMP): pyproject.toml $(STAMP)
	$(PIP) install -q -e '.[dev,synth,image]'
	touch $(IMAGE_STAMP)

# The CPU image built from docker/Dockerfile on a local Debian 12 base and run as users run it,
# then docker/compose.yaml (CPU profile + Prometheus) under podman-compose (tests/test_image*.py,
# docs/deployment.md). Prints the image size and build time.
test-image: setup $(IMAGE_STAMP)
	$(MAKE) setup-apt APT_PACKAGES="$(IMAGE_APT_PACKAGES)"
	$(VENV)/bin/pytest -q -m image -rP tests/test_image.py tests/test_image_compose.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Deployment checks (also part of `make test`): hadolint, docker-compose config, yamllint,
# kustomize + kubernetes-validate, dashboard vs /metrics, a real Prometheus scrape.
lint-deploy: setup
	$(VENV)/bin/pytest -q tests/test_deploy_static.py tests/test_deploy_prometheus.py

# ~7 min on 2 cores after setup (a fresh clone adds ~2 min of setup): the model runs get 240 s
bench: setup
	$(PY) benchmarks/model_speed.py --budget-s 240
	$(PY) benchmarks/service_load.py

# The demo pipeline (scripts/demo.mk): stages as file targets, resumable; sizes and paths are
# variables (HOURS=.. OUT=.. DATA=..). First the critical chain (teacher -> DKD student -> the
# default's fine-tune, then the causal one) one 2-thread job at a time, then the rest of the
# graph two 1-thread jobs side by side. Results stay in OUT until `make demo-publish` copies them
# to docs/ and models/.
DEMO_JOBS ?= 2
demo-model: setup
	$(MAKE) -f scripts/demo.mk JOB_THREADS=2 critical
	$(MAKE) -f scripts/demo.mk -j$(DEMO_JOBS) all

demo-publish:
	$(MAKE) -f scripts/demo.mk publish

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

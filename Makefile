# swinxseg — every install step lives here so a fresh machine (and CI) needs only `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out
INPUT ?=
PYTEST_ARGS ?=

.PHONY: install test lint lint-docker demo prometheus redis dicom3tools orthanc chromium vendor-niivue export-demo bench gpu-check image-tools image-test clean help

help:
	@echo "make demo   - segment a synthetic abdomen CT (or INPUT=path) with the bundled demo weights"
	@echo "make test   - install, lint and run the test suite"
	@echo "make bench  - side-by-side benchmark against the authors' pipeline (CPU)"
	@echo "make image-test - build the CPU variant of the image with podman and run it (root)"

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock -r requirements-dev.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# The real Prometheus server the metrics end-to-end test scrapes with (Debian package).
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) \
	  || echo "warning: could not install prometheus; its end-to-end test will be skipped"; }

# The real Redis the queue-mode end-to-end tests start (Debian package).
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
	  || echo "warning: could not install redis-server; the queue-mode tests will be skipped"; }
# dciodvfy (Debian dicom3tools) checks our RTSTRUCT and SEG against the DICOM IODs in the tests.
dicom3tools:
	@command -v dciodvfy >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null) \
	  || echo "warning: could not install dicom3tools; the dciodvfy test will be skipped"; }

# A real Orthanc PACS (with its DICOMweb plugin) and dcmtk's storescu for the PACS tests (Debian packages).
orthanc:
	@{ command -v Orthanc >/dev/null 2>&1 && command -v storescu >/dev/null 2>&1 \
	  && ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so >/dev/null 2>&1; } || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb dcmtk >/dev/null) \
	  || echo "warning: could not install orthanc, orthanc-dicomweb or dcmtk; the PACS tests will be skipped"; }

# Headless Chromium and its WebDriver for the web page's browser tests (Debian packages).
chromium:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "warning: could not install chromium/chromium-driver; the web page's browser tests will be skipped"; }

# Re-vendor the NiiVue viewer the page uses (service/web/vendor/niivue/) from npm; NIIVUE_VERSION=x.y.z to change it.
vendor-niivue:
	bash deploy/vendor-niivue.sh

# Rootful podman, runc and debootstrap build and run the image here (no Docker engine; Debian packages).
image-tools:
	@command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null; }

# Builds the CPU variant of the Dockerfile (deploy/image-test.sh) and runs the FLARE contract and the
# service inside it; prints build time, image size, cold start and stop time.
image-test: install image-tools
	$(BIN)/python -m pytest -q -s -m image tests/deploy/test_container_image.py

lint: install lint-docker
	$(BIN)/ruff check .

lint-docker: install
	$(BIN)/hadolint Dockerfile

test: install prometheus redis dicom3tools orthanc chromium lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: install
	$(BIN)/python -m phantoms.demo --out $(DEMO_OUT) $(if $(INPUT),--input $(INPUT),)

bench: install
	$(BIN)/python -m bench.run_bench

gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache

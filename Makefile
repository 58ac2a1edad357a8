# KubeFunction: `make up` brings the platform up; `make test` runs the tests.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
ENV := set -a; . scripts/env.sh; set +a;
# `make up` decides afresh, records the choice in var/platform.env and exports it to its processes
# (kubefunction/state_backends.py); every other target, like any manage.py, reads it through settings.
RECORD := exports="$$($(PY) kubefunction/state_backends.py record)" || exit 1; eval "$$exports";
# Runs a command with the embedded mode's Redis up (started and stopped with it) when the choice
# needs one; otherwise the command alone.
SERVE := $(PY) kubefunction/state_backends.py serve --
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: up run-platform install migrate bootstrap test lint bench bench-docker bench-kube worker \
        examples clean services services-stop

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
	@bash scripts/sandbox.sh || echo "WARNING: no sandbox for the local runtime: only superusers' functions run (docs/security.md)" >&2

migrate: install
	@mkdir -p var
	@$(PY) scripts/createdb.py && $(PY) manage.py migrate --noinput

bootstrap: migrate
	@$(SERVE) $(PY) manage.py bootstrap

## up: install, choose and record the state (embedded: start its Redis), migrate, collect static
## files, create admin + examples, run web + worker + beat in the foreground; stopping it stops
## the embedded Redis too. DEBUG stays off unless asked for (`make up DJANGO_DEBUG=true`);
## loopback callbacks are on for the README's example.
up: install
	@mkdir -p var
	@$(RECORD) export KUBEFUNCTION_CALLBACK_ALLOW_LOOPBACK=$${KUBEFUNCTION_CALLBACK_ALLOW_LOOPBACK:-true}; \
	  exec $(SERVE) $(MAKE) --no-print-directory run-platform

## run-platform: what `make up` runs on the state it chose: migrate, collect static files,
## bootstrap, then web + worker + beat.
run-platform:
	@$(PY) scripts/createdb.py && $(PY) manage.py migrate --noinput \
	  && $(PY) manage.py collectstatic --noinput -v0 && $(PY) manage.py bootstrap \
	  && port=$${KUBEFUNCTION_PORT:-8000} \
	  && echo "KubeFunction is starting:" \
	  && echo "  admin   http://127.0.0.1:$$port/admin/   (user admin)" \
	  && echo "  API     http://127.0.0.1:$$port/api/" \
	  && echo "  docs    http://127.0.0.1:$$port/api/docs/" \
	  && echo "  try     .venv/bin/python manage.py dispatch hello --payload '{\"name\": \"you\"}' --wait" \
	  && exec $(VENV)/bin/honcho start -f Procfile -e /dev/null

## worker: a Celery worker alone (for a second terminal; embedded, it uses `make up`'s Redis, or
## runs its own while no other does).
worker: install
	@exec $(SERVE) $(VENV)/bin/celery -A kubefunction worker --loglevel=INFO

## test: the whole suite against the real Postgres, Redis and a real Celery worker.
test: install
	@$(PY) scripts/check_services.py
	@export KUBEFUNCTION_REDIS_DB=15 KUBEFUNCTION_QUEUE=kubefunction-test; $(ENV) \
	  $(VENV)/bin/ruff check . && $(VENV)/bin/lint-imports && $(VENV)/bin/pytest $(PYTEST_ARGS)

## lint: ruff, and the import contracts between and inside the apps (pyproject.toml,
## docs/architecture.md "Layering").
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

## bench: the Celery floor vs the platform on the warm local runtime, then synchronous webhooks
## through the web server (beside /healthz and the floor), the embedded mode vs Postgres + Redis,
## then the admin over many executions.
bench: migrate
	@export KUBEFUNCTION_QUEUE=kubefunction-bench; $(PY) manage.py bench && $(PY) manage.py bench_webhook \
	  && $(PY) manage.py bench_embedded && $(PY) manage.py bench_admin

## bench-docker: raw `docker run` of the base image vs our cold and warm Docker invocations.
bench-docker: migrate
	@$(PY) manage.py bench_docker

examples:
	python3 scripts/build_examples.py

clean:
	rm -rf var

## services: Docker engine, registry on 127.0.0.1:5000 and the base image (idempotent; docs/services.md).
services:
	@bash scripts/services.sh

services-stop:
	@bash scripts/services.sh stop

## bench-kube: `docker run` of a function image vs Job (cold) and Deployment (warm) invocations
## on the fake Kubernetes API server (needs the test tree: tests/kube/).
bench-kube: migrate
	@$(PY) manage.py bench_kube

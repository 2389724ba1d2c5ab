# Everything runs from a virtual environment the targets create on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# make run: HOST, PORT and WORKERS, or hypercorn's own BIND (host:port) and WEB_CONCURRENCY,
# which win when set (make run PORT=8124, BIND=127.0.0.1:8124 make run).
HOST ?= 127.0.0.1
PORT ?= 8000
BIND ?= $(HOST):$(PORT)
WEB_CONCURRENCY ?= 2
WORKERS ?= $(WEB_CONCURRENCY)

.PHONY: run test test-motor test-pymongo lint fuzz browser clients chaos bench cluster cluster-test deploy-check nginx clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

## run: serve the API on http://$(BIND) on the embedded database, $(WORKERS) workers
run: $(BIN)/.installed
	BIND='$(BIND)' WEB_CONCURRENCY='$(WORKERS)' $(BIN)/hypercorn --config file:hypercorn_conf.py asgi:app

## cluster: INSTANCES hypercorn instances (WORKERS_PER_INSTANCE workers each) behind nginx
## (deploy/nginx) on the embedded database: https://localhost:8443 (HTTP/2), http://127.0.0.1:8080
INSTANCES ?= 2
WORKERS_PER_INSTANCE ?= 2
cluster: $(BIN)/.installed nginx
	$(BIN)/python -m scripts.cluster --instances $(INSTANCES) --workers $(WORKERS_PER_INSTANCE) $(CLUSTER_ARGS)

## cluster-test: the tests through the proxy (logout, streams across instances, HTTP/2,
## X-Forwarded-For, retries, a rolling restart, make cluster's Ctrl-C)
cluster-test: $(BIN)/.installed nginx
	$(BIN)/pytest -q -m cluster tests/cluster

## deploy-check: offline checks of what deploys: compose.yaml (docker-compose config), deploy/k8s
## (kubernetes-validate, Kubernetes 1.35 and 1.37), the container's nginx.conf (nginx -t), and
## checkov on deploy/k8s and both Dockerfiles
CHECKOV_VENV ?= .venv-checkov
deploy-check: $(BIN)/.installed $(CHECKOV_VENV)/bin/.installed nginx
	command -v docker-compose >/dev/null || (apt-get update -qq && apt-get install -y -qq docker-compose)
	CHECKOV=$(CHECKOV_VENV)/bin/checkov $(BIN)/pytest -q -m deploy tests/deploy

$(CHECKOV_VENV)/bin/.installed: requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet -r requirements-checkov.txt
	touch $@

# nginx and openssl from Debian's packages when missing (nginx-light has TLS and HTTP/2).
nginx:
	command -v nginx >/dev/null || (apt-get update -qq && apt-get install -y -qq nginx-light)
	command -v openssl >/dev/null || (apt-get update -qq && apt-get install -y -qq openssl)

## test: the whole suite on both drivers (Motor, then PyMongo's AsyncMongoClient)
test: test-motor test-pymongo

test-motor: $(BIN)/.installed
	MONGO_DRIVER=motor $(BIN)/pytest -q

test-pymongo: $(BIN)/.installed
	MONGO_DRIVER=pymongo $(BIN)/pytest -q

## fuzz: schemathesis against the real server, every operation, fixed seed, both drivers
fuzz: $(BIN)/.installed
	MONGO_DRIVER=motor $(BIN)/python -m scripts.fuzz --examples 50
	MONGO_DRIVER=pymongo $(BIN)/python -m scripts.fuzz --examples 50

## browser: /docs in headless Chromium, offline; saves a screenshot
SCREENSHOT ?= docs/explorer.png
browser: $(BIN)/.installed
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/python -m scripts.docs_browser --screenshot $(SCREENSHOT)

## clients: generated Python and TypeScript clients, and Redocly's lint, against a fresh server
clients: $(BIN)/.installed
	command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm)
	$(BIN)/python -m scripts.clients

## chaos: fault injection (database killed, SIGTERM, hostile clients, contention)
chaos: $(BIN)/.installed
	MONGO_DRIVER=motor $(BIN)/pytest -q -m chaos tests/chaos
	MONGO_DRIVER=pymongo $(BIN)/pytest -q -m chaos tests/chaos

## bench: wrk against this API, its Flask+PyMongo peer (bench/peers, sync and gthread workers) and
## a bare Quart floor, then 1,000 open event streams (live). BENCH_ARGS=--quick: short runs, one pass;
## --hop: the database 1 ms away (a relay delays each wire message); --scenarios live: live alone
bench: $(BIN)/.installed
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m scripts.bench $(BENCH_ARGS)

## lint: ruff and mypy
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .mypy_cache .ruff_cache clients/node_modules \
		bench/peers/*/.venv

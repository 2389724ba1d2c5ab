# Everything runs from a virtual environment the targets create on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

.PHONY: run test test-motor test-pymongo lint clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

## run: serve the API on http://$(HOST):$(PORT) on the embedded database
run: $(BIN)/.installed
	$(BIN)/hypercorn --config file:hypercorn_conf.py --bind $(HOST):$(PORT) --workers $(WORKERS) asgi:app

## test: the whole suite on both drivers (Motor, then PyMongo's AsyncMongoClient)
test: test-motor test-pymongo

test-motor: $(BIN)/.installed
	MONGO_DRIVER=motor $(BIN)/pytest -q

test-pymongo: $(BIN)/.installed
	MONGO_DRIVER=pymongo $(BIN)/pytest -q

## lint: ruff and mypy
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Two commands on a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
ADDR ?= 127.0.0.1:8000

.PHONY: run test smoke screenshots install migrate seed lint mutation bench-match bench-candles bench-auction clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/activate
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

migrate: install
	$(BIN)/python manage.py migrate --noinput

seed: migrate
	$(BIN)/python manage.py seed_demo --key-file var/demo-api-keys.txt

# Web server, a real Celery worker and the scheduler, on SQLite by default.
run: seed
	SANDBOX_FUNDING=$${SANDBOX_FUNDING:-true} DEMO_SIMULATION=$${DEMO_SIMULATION:-true} $(BIN)/python manage.py runexchange --addr $(ADDR)

# The whole suite, in parallel (pytest-xdist: one test database and Redis key space per test
# worker; the tests that start real processes run one after another in one group). Set
# DATABASE_URL/REDIS_URL to run the PostgreSQL/Redis/worker tests too; PYTEST_PARALLEL= runs
# it serially.
PYTEST_PARALLEL ?= -n 3 --dist loadgroup
test: install
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# The embedded default (SQLite, filesystem broker, worker, scheduler) started as `make run`
# does, in a temporary directory on a free port, and one trade through the API.
smoke: install
	$(BIN)/python tests/smoke/embedded_trade.py

# Every page captured in Chromium from a freshly seeded exchange (runexchange in a temporary
# directory, as `make smoke` starts it), into docs/screenshots/ (shown in the README).
screenshots: install
	$(BIN)/python docs/screenshots/capture.py

lint: install
	$(BIN)/ruff check .

# Mutation score of money.py, settlement allocation/amounts, billable tokens and the engine, with
# the fast SQLite tests (README "Mutation score"). Slow (tens of minutes on 2 cores): run it alone.
mutation: install
	rm -rf mutants
	$(BIN)/python tests/mutation_score.py

bench-match: install
	$(BIN)/python bench/match.py

bench-candles: install
	$(BIN)/python bench/candles.py

bench-auction: install
	$(BIN)/python bench/auction.py

clean:
	rm -rf $(VENV) var db.sqlite3* staticfiles
